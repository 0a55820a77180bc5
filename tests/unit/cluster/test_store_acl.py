"""Tenant ACL users: a tenant's URL reaches its own keys and channels and nothing else.

Against the embedded Valkey and, where present, a plain redis-server (`any_store_url`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from actors.events import EventBus
from actors.messages import DomainEvent
from cluster.auth.keys import ApiKeys
from cluster.errors import ConfigError
from cluster.redis_acl import (
    PASSWORDS_KEY,
    ensure_tenant_user,
    tenant_url,
    with_credentials,
    without_credentials,
)
from cluster.settings import load_settings
from cluster.store import Store, connect_store
from cluster.streams import GroupReader

NOPERM = (redis.exceptions.NoPermissionError, redis.ResponseError)


def connect(url: str, tmp_path: Path, tenant: str) -> Store:
    return connect_store(load_settings(tenant=tenant, state_dir=str(tmp_path)), url=url)


@pytest.fixture
def admin(any_store_url: str, tmp_path: Path) -> Iterator[Store]:
    store = connect(any_store_url, tmp_path, "default")
    yield store
    store.close()


@pytest.fixture
def tenants(admin: Store, any_store_url: str, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Tenants a and b, each connected as its own ACL user; b already has data."""
    a, b = (f"t{uuid.uuid4().hex[:8]}" for _ in range(2))
    admin.for_tenant(b).redis.set(admin.for_tenant(b).key("secret"), "b's")
    ApiKeys(admin).create_api_key(b, "admin", "b's key")
    stores = tuple(connect(tenant_url(any_store_url, t), tmp_path, t) for t in (a, b))
    yield stores  # type: ignore[misc]
    for store in stores:
        store.close()
    for tenant in (a, b):
        keys = admin.redis.keys(f"dafnck:{tenant}:*")
        if keys:
            admin.redis.delete(*keys)
        admin.redis.execute_command("ACL", "DELUSER", f"dafnck-{tenant}")
        admin.redis.hdel(PASSWORDS_KEY, tenant)


def test_a_tenant_user_reads_and_writes_its_own_keys(tenants: tuple[Store, Store]) -> None:
    a, _ = tenants
    a.redis.hset(a.key("agents"), "echo", "{}")
    assert a.redis.hget(a.key("agents"), "echo") == "{}"
    assert list(a.redis.scan_iter(match=a.key("*"))) == [a.key("agents")]


def test_another_tenants_keys_and_the_global_index_answer_noperm(
    tenants: tuple[Store, Store],
) -> None:
    a, b = tenants
    for call in (
        lambda: a.redis.get(b.key("secret")),
        lambda: a.redis.set(b.key("secret"), "mine"),
        lambda: a.redis.hgetall("dafnck:_auth:apikeys"),
        lambda: a.redis.hgetall(PASSWORDS_KEY),
        lambda: a.redis.keys("*"),
        lambda: a.redis.flushdb(),
        lambda: a.redis.execute_command("ACL", "SETUSER", "x", "on", "~*"),
        lambda: a.redis.eval("return redis.call('GET', KEYS[1])", 1, b.key("secret")),
        lambda: a.redis.eval(f"return redis.call('GET', '{b.key('secret')}')", 0),
    ):
        with pytest.raises(NOPERM, match=r"(?i)no permissions|noperm|can.t access"):
            call()
    assert b.redis.get(b.key("secret")) == "b's"  # untouched


def test_scan_of_everything_finds_only_what_the_user_may_read(
    tenants: tuple[Store, Store],
) -> None:
    a, _ = tenants
    a.redis.set(a.key("mine"), "1")
    # SCAN is allowed (it names no key) but reading what it finds is not.
    for key in a.redis.scan_iter(match="*"):
        if not key.startswith(f"dafnck:{a.tenant}:"):
            with pytest.raises(NOPERM):
                a.redis.type(key)


def test_channels_are_the_tenants_own(tenants: tuple[Store, Store]) -> None:
    a, b = tenants
    assert a.redis.publish(a.key("cache-invalidate"), "x") == 0
    with pytest.raises(NOPERM):
        a.redis.publish(b.key("cache-invalidate"), "x")
    pubsub = a.redis.pubsub()
    with pytest.raises(NOPERM):  # the refusal is the answer to SUBSCRIBE
        pubsub.subscribe(b.key("cache-invalidate"))
        pubsub.get_message(timeout=2)
    pubsub.close()


async def test_streams_groups_and_events_work_as_the_tenant(tenants: tuple[Store, Store]) -> None:
    a, _ = tenants
    await EventBus(a).publish(DomainEvent(type="agent.created", subject="echo", data={}))
    reader = GroupReader(a, a.key("inbox", "echo"), "pool", "r1")
    await reader.ensure_group("0")
    await a.async_redis().aclose()


def test_making_the_user_again_keeps_its_password(admin: Store, any_store_url: str) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    try:
        first = ensure_tenant_user(admin.redis, tenant)
        assert ensure_tenant_user(admin.redis, tenant) == first
        client = redis.Redis.from_url(tenant_url(any_store_url, tenant))
        assert client.ping()
        client.close()
    finally:
        admin.redis.execute_command("ACL", "DELUSER", f"dafnck-{tenant}")
        admin.redis.hdel(PASSWORDS_KEY, tenant)


def test_a_tenant_url_cannot_make_users(tenants: tuple[Store, Store]) -> None:
    a, _ = tenants
    with pytest.raises(ConfigError, match=r"ACL SETUSER.*redis_tenant_acl: false"):
        ensure_tenant_user(a.redis, "other")


def test_credentials_are_replaced_and_removed() -> None:
    url = "rediss://:admin@db.example:6380/2?ssl_cert_reqs=none"
    assert (
        with_credentials(url, "dafnck-acme", "p/w")
        == "rediss://dafnck-acme:p%2Fw@db.example:6380/2?ssl_cert_reqs=none"
    )
    assert without_credentials(url) == "rediss://db.example:6380/2?ssl_cert_reqs=none"
    with pytest.raises(ConfigError, match="redis_tenant_acl: false"):
        with_credentials("unix:///tmp/redis.sock", "u", "p")
