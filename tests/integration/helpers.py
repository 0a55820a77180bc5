"""Small helpers shared by the integration tests: spec builders and polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ray

from actors.models import AgentSpec
from cluster.settings import RAY_NAMESPACE

T = TypeVar("T")

#: The repository root: Ray workers import test agents as `tests.fixtures.agents` from it.
REPO_ROOT = Path(__file__).resolve().parents[2]


def echo_spec(version: str = "1.0.0", replicas: int = 1, **fields: Any) -> AgentSpec:
    return AgentSpec(
        name="echo",
        version=version,
        capabilities=["test.echo"],
        entrypoint="tests.fixtures.agents:echo",
        replicas={"min": replicas, "max": max(replicas, 4)},
        **fields,
    )


def slow_spec(replicas: int = 1, **fields: Any) -> AgentSpec:
    return AgentSpec(
        name="sleeper",
        capabilities=["test.slow"],
        entrypoint="tests.fixtures.agents:slow",
        replicas={"min": replicas, "max": max(replicas, 4)},
        **fields,
    )


def wait_until(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s}s; last: {value!r}")
        time.sleep(interval_s)
        value = check()
    return value


def replica_health(name: str) -> dict[str, Any]:
    """Ask one replica directly how many tasks it has seen."""
    handle = ray.get_actor(name, namespace=RAY_NAMESPACE)
    return dict(ray.get(handle.health.remote(), timeout=30))


def replica_names(tenant: str) -> set[str]:
    """Named replica actors of the tenant that Ray still lists as alive."""
    return {
        e["name"]
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e["namespace"] == RAY_NAMESPACE and e["name"].startswith(f"{tenant}/")
    }
