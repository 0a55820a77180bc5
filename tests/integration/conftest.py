"""One local Ray for the whole session; each test gets its own tenant (so its own
supervisor, replicas and Redis keys), removed again when the test ends."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from actors.client import Client, connect
from actors.names import supervisor_name
from cluster.settings import RAY_NAMESPACE, Settings, load_settings
from tests.conftest import METRICS_TOKEN


def kill_tenant(tenant: str) -> None:
    """Kill the tenant's supervisor and every replica it started."""
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] == RAY_NAMESPACE and (
            name == supervisor_name(tenant) or name.startswith(f"{tenant}/")
        ):
            with contextlib.suppress(ValueError):  # it died between listing and lookup
                ray.kill(ray.get_actor(name, namespace=RAY_NAMESPACE), no_restart=True)


@pytest.fixture
def tenant_settings(ray_session: None, valkey_url: str, state_dir: Path) -> Iterator[Settings]:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    yield load_settings(
        redis_url=valkey_url, state_dir=str(state_dir), tenant=tenant, reconcile_interval_s=0.5,
        metrics_token=METRICS_TOKEN,
    )  # fmt: skip
    kill_tenant(tenant)


@pytest.fixture
def client(tenant_settings: Settings) -> Client:
    """A connected client for a fresh tenant: no agents yet, a running supervisor."""
    return connect(settings=tenant_settings)


@pytest.fixture(scope="module")
def shared_client(ray_session: None, valkey_url: str, state_dir: Path) -> Iterator[Client]:
    """One tenant and supervisor shared by a whole module (a supervisor starts in seconds):
    for tests that need no empty tenant, no restart, no tenant settings of their own and no
    counts across the tenant. Their agent and workflow names must not clash."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        redis_url=valkey_url, state_dir=str(state_dir), tenant=tenant, reconcile_interval_s=0.5,
        metrics_token=METRICS_TOKEN,
    )  # fmt: skip
    yield connect(settings=settings)
    kill_tenant(tenant)
