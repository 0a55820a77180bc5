"""The state store: tenant prefixes, and a clear, quick error when Redis isn't there."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from actors.models import AgentRecord, AgentSpec
from actors.registry import AgentRegistry
from cluster.errors import StoreUnavailable
from cluster.settings import Settings, load_settings
from cluster.store import Store, connect_store


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tenant_settings(tmp_path: Path, tenant: str) -> Settings:
    return load_settings(tenant=tenant, state_dir=str(tmp_path))


@pytest.fixture
def tenant_store(any_store_url: str, tmp_path: Path) -> Iterator[Store]:
    store = connect_store(tenant_settings(tmp_path, f"t{uuid.uuid4().hex[:8]}"), url=any_store_url)
    yield store
    keys = store.redis.keys(store.key("*"))
    if keys:
        store.redis.delete(*keys)
    store.close()


def test_keys_carry_the_tenant_prefix(tenant_store: Store) -> None:
    tenant = tenant_store.tenant
    assert tenant_store.key("agents") == f"dafnck:{tenant}:agents"
    assert tenant_store.key("exec", "42") == f"dafnck:{tenant}:exec:42"


def test_writes_land_under_the_tenant_prefix(tenant_store: Store) -> None:
    spec = AgentSpec(name="echo", capabilities=["test.echo"], entrypoint="m:f")
    AgentRegistry(tenant_store).register_agent(AgentRecord(spec=spec))
    assert tenant_store.redis.keys(f"dafnck:{tenant_store.tenant}:*") == [
        f"dafnck:{tenant_store.tenant}:agents"
    ]


def test_tenants_do_not_see_each_other(tenant_store: Store) -> None:
    other = tenant_store.for_tenant(f"{tenant_store.tenant}-other")
    spec = AgentSpec(name="echo", capabilities=["test.echo"], entrypoint="m:f")
    AgentRegistry(tenant_store).register_agent(AgentRecord(spec=spec))
    assert AgentRegistry(other).all() == []
    assert [r.agent_id for r in AgentRegistry(tenant_store).all()] == ["echo@1.0.0"]


def test_connect_to_unreachable_url_fails_fast_naming_it(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        connect_store(tenant_settings(tmp_path, "acme"), url=url)
    assert time.monotonic() - started < 10  # the no-hang guarantee, not a performance figure
    assert url in str(caught.value)
    assert caught.value.retryable


def test_unreachable_url_error_hides_the_password(tmp_path: Path) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{closed_port()}/0"
    with pytest.raises(StoreUnavailable) as caught:
        connect_store(tenant_settings(tmp_path, "acme"), url=url)
    assert "s3cret-pw" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("operation", ["all", "register"])
def test_registry_on_a_lost_store_raises_store_unavailable(operation: str) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    lost = AgentRegistry(Store(redis.Redis.from_url(url, socket_connect_timeout=0.5), url, "acme"))
    spec = AgentSpec(name="echo", capabilities=["test.echo"], entrypoint="m:f")
    with pytest.raises(StoreUnavailable) as caught:
        lost.all() if operation == "all" else lost.register_agent(AgentRecord(spec=spec))
    assert url in str(caught.value)
