"""`serve.gate.Gate` against `cluster.auth.Security` on one real Valkey: the async checks
read the keys, count in the windows and write the audit entries the blocking ones do."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster.auth.limits import RateLimits
from cluster.auth.models import Principal, Role, SecurityConfig
from cluster.auth.security import Security
from cluster.data.keyring import KEY_ENV
from cluster.errors import RateLimited, StoreUnavailable, Unauthorized
from cluster.settings import load_settings
from cluster.store import Store
from cluster.valkey import free_port
from serve.gate import Gate

A, B = "0" * 15 + "a", "0" * 15 + "b"
CONFIG = SecurityConfig(rate_per_key="3/minute", rate_per_tenant="5/minute")


@pytest.fixture
def security(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Security:
    monkeypatch.delenv("DAFNCK_JWT_SECRET", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = load_settings(redis_url=store.url, state_dir=str(tmp_path))
    return Security.from_settings(store, settings, CONFIG)


@pytest.fixture
def gate(security: Security, store: Store) -> Gate:
    return Gate(security, store, CONFIG)


def _token(security: Security, secret: str) -> str:
    grant = {"grant_type": "client_credentials", "client_secret": secret}
    return security.token_endpoint(grant).access_token


async def test_a_key_and_its_token_pass_until_the_key_is_revoked(
    security: Security, gate: Gate
) -> None:
    key_id, secret = security.keys.create_api_key("acme", Role.AGENT, "worker")
    token = _token(security, secret)
    for credential in (secret, token):
        assert await gate.authenticate(credential) == security.authenticate(credential)
    security.keys.revoke_api_key("acme", key_id)
    with pytest.raises(Unauthorized, match=rf"API key '{key_id}' has been revoked"):
        await gate.authenticate(secret)
    with pytest.raises(Unauthorized, match=r"behind this token has been revoked"):
        await gate.authenticate(token)


async def test_wrong_malformed_and_foreign_credentials_are_refused(
    security: Security, gate: Gate, store: Store
) -> None:
    key_id, secret = security.keys.create_api_key("acme", Role.ADMIN, "k")
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthorized, match=rf"'{key_id}' is unknown or its secret does not match"):
        await gate.authenticate(wrong)
    with pytest.raises(Unauthorized, match=r"malformed API key"):
        await gate.authenticate("dk_nothex_x")
    with pytest.raises(Unauthorized, match=r"no credential"):
        await gate.authenticate("")
    with pytest.raises(Unauthorized, match=r"not a JWT"):
        await gate.authenticate("eyJ.not.a.token")


async def test_a_users_token_is_checked_against_the_user(security: Security, gate: Gate) -> None:
    security.users.create_user("acme", "ann", "a-long-password-1", Role.VIEWER)
    grant = {"grant_type": "password", "tenant": "acme", "username": "ann"}
    token = security.token_endpoint({**grant, "password": "a-long-password-1"}).access_token
    assert (await gate.authenticate(token)).subject == "ann"
    security.users.set_disabled("acme", "ann", True)
    with pytest.raises(Unauthorized, match=r"disabled|revoked"):
        await gate.authenticate(token)


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
async def test_both_count_in_the_same_windows(
    security: Security, store: Store, strategy: str
) -> None:
    config = CONFIG.model_copy(update={"rate_strategy": strategy})
    security = Security(
        security.keys, security.users, security.tokens, RateLimits(store, config), security.audit
    )
    gate = Gate(security, store, config)
    ann = Principal(subject=f"key:{A}", tenant="acme", role=Role.AGENT, kind="api_key", key_id=A)
    bob = Principal(subject=f"key:{B}", tenant="acme", role=Role.AGENT, kind="api_key", key_id=B)
    security.check_rate(ann)
    await gate.check_rate(ann)
    security.check_rate(ann)  # the third of ann's 3 a minute
    with pytest.raises(RateLimited, match=rf"credential '{A}' exceeded") as refused:
        await gate.check_rate(ann)
    assert 0 < refused.value.retry_after_s <= 60
    await gate.check_rate(bob)
    await gate.check_rate(bob)  # the tenant's fifth
    with pytest.raises(RateLimited, match=r"tenant 'acme' exceeded"):
        security.check_rate(bob)


async def test_an_entry_it_writes_is_read_back_by_the_audit_log(
    security: Security, gate: Gate
) -> None:
    ann = Principal(subject=f"key:{A}", tenant="acme", role=Role.ADMIN, kind="api_key", key_id=A)
    await gate.record(ann, "tasks:run", "task:1", "req-1", "failed", "it broke")
    security.audit.record(ann, "acme", "tasks:run", "task:2", "req-2", "ok")
    page = security.audit.list("acme")
    mine = [e for e in page.entries if e.object == "task:1"]
    assert [(e.subject, e.role, e.outcome, e.detail, e.request_id) for e in mine] == [
        (f"key:{A}", "admin", "failed", "it broke", "req-1")
    ]
    assert {e.object for e in page.entries} == {"task:1", "task:2"}  # one stream, both


async def test_a_store_that_is_down_is_store_unavailable(security: Security) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    options = {"socket_connect_timeout": 0.2, "retry": Retry(NoBackoff(), 0)}
    down = Gate(security, Store(redis.Redis.from_url(url, **options), url, "acme", options), CONFIG)
    ann = Principal(subject=f"key:{A}", tenant="acme", role=Role.ADMIN, kind="api_key", key_id=A)
    with pytest.raises(StoreUnavailable, match=r"is unreachable"):
        await down.check_rate(ann)
    with pytest.raises(StoreUnavailable):
        await down.record(ann, "tasks:run")
