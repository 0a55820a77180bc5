"""Store isolation on a real cluster: code running in tenant A's replica holds only A's
Redis user, so B's keys, the global API key index and the tenant passwords answer NOPERM,
and the embedded Valkey refuses anyone without a password (NOAUTH)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from actors.client import Client
from actors.models import AgentSpec
from cluster.auth.keys import ApiKeys
from cluster.redis_acl import PASSWORDS_KEY
from cluster.store import Store

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def other_tenant(client: Client) -> Iterator[Store]:
    """Tenant B with data and an API key (so the global index names it), written as admin."""
    b = client.store.for_tenant(f"b{uuid.uuid4().hex[:10]}")
    b.redis.set(b.key("secret"), "b's secret")
    b.redis.hset(b.key("agents"), "echo@1.0.0", "{}")
    ApiKeys(b).create_api_key(b.tenant, "admin", "b's admin key")
    yield b
    keys = b.redis.keys(b.key("*"))
    if keys:
        b.redis.delete(*keys)


def probe_spec() -> AgentSpec:
    return AgentSpec(
        name="prober", capabilities=["probe.store"],
        entrypoint="tests.fixtures.store_probe:probe",
    )  # fmt: skip


def test_a_replica_reaches_only_its_own_tenants_keys(client: Client, other_tenant: Store) -> None:
    client.agents.apply(probe_spec())
    own_key = client.store.key("probe")
    targets = [
        other_tenant.key("secret"),
        other_tenant.key("agents"),
        other_tenant.key("auth", "apikeys"),
        "dafnck:_auth:apikeys",
        PASSWORDS_KEY,
    ]
    result = client.tasks.run("probe.store", {"own_key": own_key, "keys": targets})
    assert result.ok, result.error
    report = result.output
    assert report["users"] == [f"dafnck-{client.settings.tenant}"]  # no admin URL in the replica
    attempts = report[f"dafnck-{client.settings.tenant}"]
    assert attempts.pop("own:set") == "ALLOWED"
    assert client.store.redis.get(own_key) == "mine"  # the URL really works for its own keys
    assert attempts.pop("keys *").startswith("NOPERM")
    assert {f"{op} {key}" for key in targets for op in ("get", "hgetall", "del")} <= set(attempts)
    refused = {name: outcome for name, outcome in attempts.items() if outcome.startswith("NOPERM")}
    assert refused == attempts, (
        f"not refused: { {k: v for k, v in attempts.items() if k not in refused} }"
    )
    assert all(outcome.startswith("NOAUTH") for outcome in report["anonymous"].values())
    # ... and B's data and the index are untouched.
    assert other_tenant.redis.get(other_tenant.key("secret")) == "b's secret"
    assert (
        other_tenant.redis.hget(
            "dafnck:_auth:apikeys",
            next(iter(other_tenant.redis.hkeys(other_tenant.key("auth", "apikeys")))),
        )
        == other_tenant.tenant
    )


def test_the_embedded_valkey_refuses_a_client_without_its_password(client: Client) -> None:
    where = urlsplit(client.store.url)
    assert where.password  # the session's Valkey is started as `dafnck up` starts it
    anonymous = redis.Redis(
        host=where.hostname or "", port=where.port or 0, protocol=2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis.AuthenticationError, match=r"(?i)authentication required"):
        anonymous.get("dafnck:_auth:apikeys")
    anonymous.close()


def test_the_supervisor_holds_the_tenant_user_not_the_admin(client: Client) -> None:
    import ray

    where = ray.get(client.supervisor.store_url.remote())
    assert "@" not in where["url"]  # any Ray caller may ask: no credentials in the answer
    users = client.store.redis.acl_list()
    assert any(line.startswith(f"user dafnck-{client.settings.tenant} on") for line in users)
    rules = next(line for line in users if line.startswith(f"user dafnck-{client.settings.tenant}"))
    assert f"~dafnck:{client.settings.tenant}:*" in rules and "-@admin" in rules
