"""Password logins as the token endpoint admits them, on a real Valkey: limits per address and
per username counted before any hashing, a doubling delay per (username, address) instead of
a lockout, and a user's tokens refused as soon as the user changes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from cluster.auth.audit import AuditLog
from cluster.auth.keys import ApiKeys
from cluster.auth.limits import LoginLimits, RateLimits
from cluster.auth.models import Role, SecurityConfig
from cluster.auth.security import Security
from cluster.auth.tokens import JwtKeyring, TokenService
from cluster.auth.users import BAD_LOGIN, Users
from cluster.data.keyring import KEY_ENV, KeyRing
from cluster.errors import RateLimited, Unauthorized
from cluster.store import Store

PASSWORD = "correct horse battery"
SECRET = "k" * 48


class CountingHasher(PasswordHash):
    """Real argon2id (cheap parameters) that counts its verifications."""

    def __init__(self) -> None:
        super().__init__((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
        self.verified = 0

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        self.verified += 1
        return super().verify(password, hash)


def make_security(store: Store, tmp_path: Path, hasher: PasswordHash, **config: object) -> Security:
    conf = SecurityConfig(**config)  # type: ignore[arg-type]
    return Security(
        ApiKeys(store),
        Users(store, KeyRing(tmp_path / "data.key"), conf, hasher),
        TokenService(JwtKeyring({"k1": SECRET}, "k1", "test"), conf),
        RateLimits(store, conf),
        AuditLog(store),
        LoginLimits(store, conf),
    )


@pytest.fixture(autouse=True)
def _no_data_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def grant(username: str = "bob", password: str = "wrong wrong wrong") -> dict[str, str]:
    return {"grant_type": "password", "tenant": "acme", "username": username, "password": password}


def test_an_address_over_its_rate_is_refused_before_any_hash(store: Store, tmp_path: Path) -> None:
    hasher = CountingHasher()
    security = make_security(store, tmp_path, hasher, login_rate_per_source="3/minute")
    security.users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    hashed = hasher.verified
    for name in ("bob", "amy", "zed"):
        with pytest.raises(Unauthorized, match=BAD_LOGIN):
            security.token_endpoint(grant(name), "10.0.0.1")
    with pytest.raises(RateLimited, match=r"3 per 1 minute for logins from '10.0.0.1'") as err:
        security.token_endpoint(grant("bob", PASSWORD), "10.0.0.1")
    assert hasher.verified == hashed + 3  # the refused one cost no hash
    assert 0 < err.value.retry_after_s <= 60
    assert pickle.loads(pickle.dumps(err.value)).retry_after_s == err.value.retry_after_s
    # Another address is not held back by this one's flood.
    assert security.token_endpoint(grant("bob", PASSWORD), "10.0.0.2").access_token


def test_failures_delay_only_that_username_from_that_address(store: Store, tmp_path: Path) -> None:
    hasher = CountingHasher()
    security = make_security(store, tmp_path, hasher, login_free_failures=2, login_delay_base_s=30)
    security.users.create_user("acme", "bob", PASSWORD, Role.VIEWER)
    for _ in range(3):  # two free failures, the third starts a delay
        with pytest.raises(Unauthorized):
            security.token_endpoint(grant(), "10.0.0.1")
    hashed = hasher.verified
    with pytest.raises(RateLimited, match=r"logins of 'bob' from '10.0.0.1' failed") as err:
        security.token_endpoint(grant("bob", PASSWORD), "10.0.0.1")
    assert 25 < err.value.retry_after_s <= 30 and hasher.verified == hashed
    # The owner, from elsewhere, is not locked out by someone else's guesses.
    token = security.token_endpoint(grant("bob", PASSWORD), "10.0.0.9").access_token
    assert security.authenticate(token).subject == "bob"


def test_the_delay_doubles_and_a_success_forgets_it(store: Store, tmp_path: Path) -> None:
    limits = LoginLimits(store, SecurityConfig(login_free_failures=1, login_delay_base_s=2))
    delays = [limits.failed("acme", "bob", "10.0.0.1") for _ in range(5)]
    assert delays == [0.0, 2.0, 4.0, 8.0, 16.0]
    with pytest.raises(RateLimited):
        limits.admit("acme", "bob", "10.0.0.1")
    limits.succeeded("acme", "bob", "10.0.0.1")
    limits.admit("acme", "bob", "10.0.0.1")
    assert limits.failed("acme", "bob", "10.0.0.1") == 0.0  # counting starts over


def test_failures_of_a_username_from_many_addresses_are_capped(
    store: Store, tmp_path: Path
) -> None:
    hasher = CountingHasher()
    security = make_security(store, tmp_path, hasher, login_rate_per_user="4/minute")
    for i in range(4):
        with pytest.raises(Unauthorized):
            security.token_endpoint(grant(), f"10.0.1.{i}")
    hashed = hasher.verified
    with pytest.raises(RateLimited, match=r"failed logins of 'bob'"):
        security.token_endpoint(grant(), "10.0.1.200")
    assert hasher.verified == hashed
    security.users.create_user("acme", "amy", PASSWORD, Role.VIEWER)
    assert security.token_endpoint(grant("amy", PASSWORD), "10.0.1.200").access_token


def test_a_users_token_dies_with_a_new_password_disabling_or_deleting(
    store: Store, tmp_path: Path
) -> None:
    security = make_security(store, tmp_path, CountingHasher())
    users = security.users
    users.create_user("acme", "bob", PASSWORD, Role.OPERATOR)

    def token(password: str = PASSWORD) -> str:
        return security.token_endpoint(grant("bob", password), "10.0.0.1").access_token

    first = token()
    assert security.authenticate(first).role is Role.OPERATOR
    users.set_password("acme", "bob", "another long passphrase")
    with pytest.raises(Unauthorized, match="revoked"):
        security.authenticate(first)
    second = token("another long passphrase")
    security.authenticate(second)
    users.set_disabled("acme", "bob", True)
    with pytest.raises(Unauthorized, match="disabled"):
        security.authenticate(second)
    users.set_disabled("acme", "bob", False)
    third = token("another long passphrase")
    users.delete_user("acme", "bob")
    with pytest.raises(Unauthorized, match="no longer exists"):
        security.authenticate(third)
