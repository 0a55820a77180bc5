"""Health: what a replica answers a probe (`ReplicaHealth`), a pool as the supervisor sees
it (`PoolHealth`), and `monitor_health`'s component view, one status per part an operator
looks at.

Statuses: `ok`, `degraded` (serving, but short of what it should have) and `unavailable`.
The report keeps the supervisor's flat fields (`status`, `store_latency_ms`, `pools`,
`system`, `ray`) and adds `components`: supervisor, registry, hub, store, each pool, and
the Ray cluster. The dashboard reads the same field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SerializerFunctionWrapHandler, model_serializer

from cluster.contracts import Record
from cluster.errors import DafnckError
from cluster.store import redacted

if TYPE_CHECKING:
    from actors.registry import AgentRegistry


class ReplicaHealth(Record):
    """One replica's answer to a health probe, or what the probe saw instead. What was not
    reported is None and left out of the JSON: `{}` is a replica not probed yet, and only a
    replica that answered has a `pid`."""

    replica: str | None = None
    agent: str | None = None
    pid: int | None = None
    #: Its slot in the pool (a replacement takes the lowest free one, and its state).
    slot: int | None = None
    in_flight: int | None = None
    #: Tasks that arrived and wait for one of the replica's `max_concurrency` slots.
    queued: int | None = None
    completed: int | None = None
    failed: int | None = None
    busy_s: float | None = None
    uptime_s: float | None = None
    #: Not placed on a node yet: it waits for resources.
    pending: bool | None = None
    #: Did not answer the probe in time (its event loop is blocked); it is not replaced.
    unresponsive: bool | None = None
    #: Why the replica could not build its agent from the spec.
    error: str | None = None

    @model_serializer(mode="wrap")
    def _reported(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    @property
    def load(self) -> int:
        """Tasks it holds: running and waiting for a slot."""
        return (self.in_flight or 0) + (self.queued or 0)


class PoolHealth(Record):
    """One agent version's pool as the supervisor sees it: `monitor_health()["pools"][id]`."""

    #: The agent's status: active | draining | disabled.
    status: str
    capabilities: list[str] = []
    desired: int
    running: int
    in_flight: int = 0
    completed: int = 0
    #: Replicas replaced after they died.
    restarts: int = 0
    #: Replicas waiting for resources.
    pending: int = 0
    #: Replicas taking no new tasks, stopped once idle.
    retiring: int = 0
    autoscaling: bool = False
    #: Replica name -> its last probe (`{}` before the first).
    replicas: dict[str, ReplicaHealth] = {}


def pools_of(report: Mapping[str, Any]) -> dict[str, PoolHealth]:
    """The typed pools of a health report (`monitor_health()`, `Client.health()`)."""
    return {k: PoolHealth.model_validate(p) for k, p in report.get("pools", {}).items()}


def pool_status(pool: PoolHealth) -> str:
    """`unavailable` with no live replica it should have, `degraded` short of its size or
    with a replica that does not answer, else `ok`."""
    if pool.status != "active":
        return "ok"
    unresponsive = any(r.unresponsive for r in pool.replicas.values())
    if pool.desired and pool.running == 0:
        return "unavailable"
    if pool.running < pool.desired or unresponsive:
        return "degraded"
    return "ok"


def components(report: dict[str, Any], registry: AgentRegistry) -> dict[str, Any]:
    """The per-component view of a supervisor's health report."""
    store_ms = report.get("store_latency_ms")
    store_ok = store_ms is not None
    store = {"status": "ok" if store_ok else "unavailable", "latency_ms": store_ms,
             "url": redacted(registry.store.url)}  # fmt: skip
    registry_part: dict[str, Any] = {"status": store["status"]}
    if store_ok:
        try:
            registry_part["agents"] = len(registry.all())
        except DafnckError as exc:
            registry_part = {"status": "unavailable", "error": exc.message}
    pools = {
        agent_id: {
            "status": pool_status(pool),
            "running": pool.running,
            "desired": pool.desired,
            "restarts": pool.restarts,
            "load": pool.in_flight,
        }
        for agent_id, pool in pools_of(report).items()
    }
    ray_info = report.get("ray", {})
    dead_nodes = ray_info.get("dead_nodes", 0)
    system: dict[str, Any] = next(iter(report.get("system", {}).values()), {})
    return {
        "supervisor": {"status": "ok", **system},
        "registry": registry_part,
        # The hub is a library over the store's streams: it serves while the store does.
        "hub": {"status": store["status"]},
        "store": store,
        "pools": pools,
        "ray": {"status": "degraded" if dead_nodes else "ok", **ray_info},
    }


def overall(parts: dict[str, Any]) -> str:
    """The worst status of any component."""
    statuses = [p["status"] for k, p in parts.items() if k != "pools"]
    statuses += [p["status"] for p in parts["pools"].values()]
    if "unavailable" in statuses:
        return "unavailable" if parts["store"]["status"] == "unavailable" else "degraded"
    return "degraded" if "degraded" in statuses else "ok"


__all__ = ["PoolHealth", "ReplicaHealth", "components", "overall", "pool_status", "pools_of"]
