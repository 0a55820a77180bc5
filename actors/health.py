"""`monitor_health`'s component view: one status per part an operator looks at.

Statuses: `ok`, `degraded` (serving, but short of what it should have) and `unavailable`.
The report keeps the supervisor's flat fields (`status`, `store_latency_ms`, `pools`,
`system`, `ray`) and adds `components`: supervisor, registry, hub, store, each pool, and
the Ray cluster.
"""

from __future__ import annotations

from typing import Any

from actors.registry import AgentRegistry
from cluster.errors import DafnckError
from cluster.store import redacted


def pool_status(pool: dict[str, Any]) -> str:
    """`unavailable` with no live replica it should have, `degraded` short of its size or
    with a replica that does not answer, else `ok`."""
    if pool["status"] != "active":
        return "ok"
    replicas = pool.get("replicas", {})
    unresponsive = sum(1 for r in replicas.values() if r.get("unresponsive"))
    if pool["desired"] and pool["running"] == 0:
        return "unavailable"
    if pool["running"] < pool["desired"] or unresponsive:
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
            "running": pool["running"],
            "desired": pool["desired"],
            "restarts": pool["restarts"],
            "load": pool["in_flight"],
        }
        for agent_id, pool in report.get("pools", {}).items()
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


__all__ = ["components", "overall", "pool_status"]
