"""API keys on a real Valkey: shown once and kept only as a digest, revocable, scoped to one
tenant and one role, and refused without ever echoing the secret."""

from __future__ import annotations

import hashlib
import re
import secrets

import pytest

from cluster.auth.keys import ApiKeys
from cluster.auth.models import Role
from cluster.errors import InputInvalid, NotFound, Unauthorized
from cluster.store import Store


@pytest.fixture
def keys(store: Store) -> ApiKeys:
    return ApiKeys(store)


def everything_in_redis(store: Store) -> str:
    """Every key and value in the database, as one text to search."""
    parts = []
    for key in store.redis.scan_iter("*"):
        kind = store.redis.type(key)
        value = store.redis.hgetall(key) if kind == "hash" else store.redis.get(key)
        parts.append(f"{key}={value}")
    return "\n".join(parts)


def test_a_key_is_shown_once_and_redis_keeps_only_its_digest(keys: ApiKeys, store: Store) -> None:
    key_id, secret = keys.create_api_key("acme", Role.OPERATOR, "ci")
    assert re.fullmatch(r"dk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", secret) and key_id in secret
    raw = everything_in_redis(store)
    assert secret not in raw and secret.rsplit("_", 1)[1] not in raw
    assert hashlib.sha256(secret.encode()).hexdigest() in raw
    assert "dafnck:_auth:apikeys" in raw and "dafnck:acme:auth:apikeys" in raw
    [info] = keys.list_api_keys("acme")
    assert (info.key_id, info.role, info.name, info.revoked_at) == (
        key_id,
        Role.OPERATOR,
        "ci",
        None,
    )
    assert secret not in info.model_dump_json() and "sha256" not in info.model_dump_json()


def test_a_key_authenticates_as_its_tenant_and_role(keys: ApiKeys) -> None:
    key_id, secret = keys.create_api_key("acme", "agent", "worker")
    principal = keys.authenticate_api_key(secret)
    assert (principal.tenant, principal.role, principal.kind, principal.key_id) == (
        "acme", Role.AGENT, "api_key", key_id,
    )  # fmt: skip
    assert principal.subject == f"key:{key_id}"


def test_a_revoked_key_is_refused_at_once_and_listed_as_revoked(keys: ApiKeys) -> None:
    key_id, secret = keys.create_api_key("acme", Role.VIEWER, "old")
    keys.authenticate_api_key(secret)
    revoked = keys.revoke_api_key("acme", key_id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthorized, match=rf"API key '{key_id}' has been revoked") as err:
        keys.authenticate_api_key(secret)
    assert secret.rsplit("_", 1)[1] not in str(err.value)
    assert keys.revoke_api_key("acme", key_id).revoked_at == revoked.revoked_at
    assert keys.list_api_keys("acme")[0].revoked_at == revoked.revoked_at


@pytest.mark.parametrize(
    "bad",
    [
        "dk_0123456789abcdef_" + "A" * 43,  # well formed, unknown id
        "nonsense",
        "dk_zz_" + "s3cr3t" * 8,
        "Bearer dk_0123456789abcdef_" + "A" * 43,
    ],
)
def test_unknown_or_malformed_keys_are_refused_without_echo(keys: ApiKeys, bad: str) -> None:
    keys.create_api_key("acme", Role.ADMIN, "real")
    with pytest.raises(Unauthorized) as err:
        keys.authenticate_api_key(bad)
    assert bad not in str(err.value) and "A" * 43 not in str(err.value)


def test_the_right_id_with_a_wrong_secret_is_refused(keys: ApiKeys) -> None:
    key_id, _ = keys.create_api_key("acme", Role.ADMIN, "real")
    guess = f"dk_{key_id}_{secrets.token_urlsafe(32)}"
    with pytest.raises(
        Unauthorized, match=rf"'{key_id}' is unknown or its secret does not match"
    ) as err:
        keys.authenticate_api_key(guess)
    assert guess.rsplit("_", 1)[1] not in str(err.value)
    # A wrong secret must not learn that the key was revoked either.
    keys.revoke_api_key("acme", key_id)
    with pytest.raises(Unauthorized, match=r"unknown or its secret does not match"):
        keys.authenticate_api_key(guess)


def test_a_key_of_one_tenant_never_yields_another(keys: ApiKeys) -> None:
    made = {t: [keys.create_api_key(t, Role.ADMIN, f"k{i}") for i in range(5)] for t in ("a", "b")}
    for tenant, pairs in made.items():
        for _, secret in pairs:
            assert keys.authenticate_api_key(secret).tenant == tenant
        assert {k.key_id for k in keys.list_api_keys(tenant)} == {k for k, _ in pairs}
    a_id, a_secret = made["a"][0]
    with pytest.raises(NotFound, match=rf"API key '{a_id}' not found in tenant 'b'"):
        keys.revoke_api_key("b", a_id)
    assert keys.authenticate_api_key(a_secret).tenant == "a"


def test_an_index_pointing_at_another_tenant_resolves_to_no_one(
    keys: ApiKeys, store: Store
) -> None:
    a_id, a_secret = keys.create_api_key("a", Role.ADMIN, "k")
    store.redis.hset("dafnck:_auth:apikeys", a_id, "b")
    store.redis.hset("dafnck:b:auth:apikeys", a_id, store.redis.hget("dafnck:a:auth:apikeys", a_id))
    with pytest.raises(Unauthorized):
        keys.authenticate_api_key(a_secret)


def test_bad_requests_list_every_problem(keys: ApiKeys, store: Store) -> None:
    with pytest.raises(InputInvalid) as err:
        keys.create_api_key("Not A Tenant", "root", "")
    problems = " | ".join(err.value.problems)
    assert "name ''" in problems and "tenant" in problems and "role" in problems
    assert list(store.redis.scan_iter("*")) == []
