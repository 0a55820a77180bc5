"""One local Ray for the whole session and the tenant's system actors on the session Valkey."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from actors.client import Client, connect
from actors.system import find_supervisor
from cluster.settings import Settings, load_settings
from cluster.store import connect_store


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, namespace="dafnck", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def client(ray_session: None, valkey_url: str, state_dir) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    """A connected client on a fresh tenant's state: no agents, a running supervisor."""
    settings: Settings = load_settings(redis_url=valkey_url, state_dir=str(state_dir), reconcile_interval_s=0.5)
    store = connect_store(settings)
    store.redis.flushdb()
    old = find_supervisor(settings.tenant)
    if old is not None:
        ray.kill(old, no_restart=True)
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == "dafnck":
            ray.kill(ray.get_actor(entry["name"], namespace="dafnck"), no_restart=True)
    yield connect(settings=settings)
