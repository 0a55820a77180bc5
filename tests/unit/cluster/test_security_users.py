"""Users on a real Valkey: argon2 hashes, TOTP required for admins (enrolment, replay),
one answer for every wrong part of a login, no lockout, and new passwords, disabling and
deleting that void the user's tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from cluster.auth.models import Role, SecurityConfig
from cluster.auth.users import BAD_LOGIN, Users
from cluster.data.keyring import KEY_ENV, KeyRing
from cluster.errors import Conflict, InputInvalid, NotFound, Unauthorized
from cluster.store import Store

PASSWORD = "correct horse battery"


@pytest.fixture
def users(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Users]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    # Real argon2id, with cheap parameters so the repeated-login tests stay fast.
    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    yield Users(store, KeyRing(tmp_path / "data.key"), SecurityConfig(), cheap)


def everything_in_redis(store: Store) -> str:
    parts = []
    for key in store.redis.scan_iter("*"):
        kind = store.redis.type(key)
        value = store.redis.hgetall(key) if kind == "hash" else store.redis.get(key)
        parts.append(f"{key}={value}")
    return "\n".join(parts)


def accepted(totp: pyotp.TOTP) -> set[str]:
    """The codes a login accepts now: this time step and one either side."""
    return {totp.at(time.time() + drift) for drift in (-30, 0, 30)}


def wrong_code(totp: pyotp.TOTP) -> str:
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in accepted(totp))


def refused(users: Users, *args: str | None) -> str:
    with pytest.raises(Unauthorized) as err:
        users.login(*args)  # type: ignore[arg-type]
    return str(err.value)


def test_a_user_logs_in_with_the_password_kept_only_as_argon2(users: Users, store: Store) -> None:
    users.create_user("acme", "bob", PASSWORD, "operator")
    principal = users.login("acme", "bob", PASSWORD)
    assert (principal.subject, principal.tenant, principal.role, principal.kind) == (
        "bob", "acme", Role.OPERATOR, "user",
    )  # fmt: skip
    raw = everything_in_redis(store)
    assert PASSWORD not in raw and "$argon2id$" in raw


def test_by_default_passwords_get_pwdlibs_recommended_argon2id(
    store: Store, tmp_path: Path
) -> None:
    users = Users(store, KeyRing(tmp_path / "data.key"))
    users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    assert "$argon2id$v=19$m=65536,t=3,p=4$" in everything_in_redis(store)
    assert users.login("acme", "bob", PASSWORD).subject == "bob"


def test_every_wrong_part_gets_the_same_answer(users: Users) -> None:
    users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    users.create_user("acme", "carol", PASSWORD, Role.VIEWER)
    secret = users.enable_totp("acme", "carol").secret
    answers = {
        refused(users, "acme", "bob", "wrong password!!"),
        refused(users, "acme", "nobody", PASSWORD),
        refused(users, "other", "bob", PASSWORD),
        refused(users, "acme", "carol", PASSWORD),  # code missing
        refused(users, "acme", "carol", PASSWORD, wrong_code(pyotp.TOTP(secret))),
        refused(users, "acme", "BAD NAME", PASSWORD),
    }
    assert answers == {BAD_LOGIN}


def test_an_admin_cannot_log_in_before_enrolling_totp(users: Users, store: Store) -> None:
    users.create_user("acme", "root", PASSWORD, Role.ADMIN)
    assert users.get_user("acme", "root").totp == "none"
    refused(users, "acme", "root", PASSWORD)
    refused(users, "acme", "root", PASSWORD, "123456")
    enrolment = users.enable_totp("acme", "root")
    assert enrolment.provisioning_uri.startswith("otpauth://totp/DafnckMachine:root%40acme?")
    assert f"secret={enrolment.secret}" in enrolment.provisioning_uri
    assert enrolment.secret not in everything_in_redis(store)  # kept encrypted
    assert users.get_user("acme", "root").totp == "pending"
    refused(users, "acme", "root", PASSWORD)  # no code
    principal = users.login("acme", "root", PASSWORD, pyotp.TOTP(enrolment.secret).now())
    assert principal.role is Role.ADMIN
    assert users.get_user("acme", "root").totp == "active"


def test_a_one_time_code_works_once(users: Users) -> None:
    users.create_user("acme", "root", PASSWORD, Role.ADMIN)
    totp = pyotp.TOTP(users.enable_totp("acme", "root").secret)
    code = totp.now()
    users.login("acme", "root", PASSWORD, code)
    refused(users, "acme", "root", PASSWORD, code)
    # The neighbouring step (clock drift) is accepted once too.
    users.login("acme", "root", PASSWORD, totp.at(time.time() + 30))


def test_a_new_totp_secret_replaces_the_old_one(users: Users) -> None:
    users.create_user("acme", "root", PASSWORD, Role.ADMIN)
    old = pyotp.TOTP(users.enable_totp("acme", "root").secret)
    new = pyotp.TOTP(users.enable_totp("acme", "root").secret)
    if old.now() not in accepted(new):  # else the two secrets agree by chance (p ~ 3e-6)
        refused(users, "acme", "root", PASSWORD, old.now())
    users.login("acme", "root", PASSWORD, new.now())
    assert users.get_user("acme", "root").totp == "active"


def test_repeated_failures_never_lock_the_name_for_the_right_password(users: Users) -> None:
    users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    for _ in range(20):
        refused(users, "acme", "bob", "guess guess guess")
    assert users.login("acme", "bob", PASSWORD).subject == "bob"  # limits live in LoginLimits


def test_a_new_password_replaces_the_old_and_bumps_the_token_version(users: Users) -> None:
    users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    old = users.login("acme", "bob", PASSWORD)
    assert old.token_version == 0
    users.check_token("acme", "bob", old.token_version)
    users.set_password("acme", "bob", "a brand new passphrase")
    refused(users, "acme", "bob", PASSWORD)
    with pytest.raises(Unauthorized, match="this token was revoked"):
        users.check_token("acme", "bob", old.token_version)
    new = users.login("acme", "bob", "a brand new passphrase")
    users.check_token("acme", "bob", new.token_version)
    with pytest.raises(InputInvalid, match="at least 12 characters"):
        users.set_password("acme", "bob", "short")
    with pytest.raises(NotFound, match="user 'zed' not found"):
        users.set_password("acme", "zed", "a brand new passphrase")


def test_a_disabled_user_cannot_log_in_and_its_tokens_stay_void_once_enabled(
    users: Users,
) -> None:
    users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    before = users.login("acme", "bob", PASSWORD).token_version
    assert users.set_disabled("acme", "bob", True).disabled
    assert refused(users, "acme", "bob", PASSWORD) == BAD_LOGIN  # the same answer as a typo
    with pytest.raises(Unauthorized, match="'bob' behind this token is disabled"):
        users.check_token("acme", "bob", before)
    assert not users.set_disabled("acme", "bob", False).disabled
    after = users.login("acme", "bob", PASSWORD).token_version
    users.check_token("acme", "bob", after)
    with pytest.raises(Unauthorized, match="revoked"):
        users.check_token("acme", "bob", before)


def test_a_deleted_user_is_gone_with_its_tokens(users: Users) -> None:
    users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    users.create_user("acme", "amy", PASSWORD, Role.OPERATOR)
    version = users.login("acme", "bob", PASSWORD).token_version
    users.delete_user("acme", "bob")
    assert [u.username for u in users.list_users("acme")] == ["amy"]
    refused(users, "acme", "bob", PASSWORD)
    with pytest.raises(Unauthorized, match="'bob' behind this token no longer exists"):
        users.check_token("acme", "bob", version)
    with pytest.raises(NotFound):
        users.delete_user("acme", "bob")
    with pytest.raises(NotFound):
        users.set_disabled("acme", "bob", True)


def test_bad_accounts_are_refused_with_every_problem(users: Users) -> None:
    with pytest.raises(InputInvalid) as err:
        users.create_user("acme", "Bad Name", "short", "root")
    problems = " | ".join(err.value.problems)
    assert "at least 12 characters" in problems and "username" in problems and "role" in problems
    users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    with pytest.raises(Conflict, match=r"user 'bob' already exists in tenant 'acme'"):
        users.create_user("acme", "bob", PASSWORD, Role.ADMIN)
    with pytest.raises(NotFound, match=r"user 'zed' not found"):
        users.enable_totp("acme", "zed")
