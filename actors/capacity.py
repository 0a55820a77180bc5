"""The tenant's replica and CPU quotas, checked when an agent is applied or scaled.

A pool counts at what it may grow to without another check: an autoscaled pool at its
`replicas.max` (the autoscaler moves it within min..max on its own), any other pool at
its desired size. A pool that is not active counts at the replicas it still runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from actors.models import AgentRecord, AgentSpec, AgentStatus
from cluster.errors import QuotaExceeded
from cluster.quotas import Quotas


class _Pool(Protocol):
    record: AgentRecord
    replicas: dict[str, object]


def ceiling(spec: AgentSpec, desired: int) -> int:
    """The replicas a pool of `spec` at `desired` may run without another check."""
    return spec.replicas.max if spec.autoscaling is not None else desired


def held(pool: _Pool) -> tuple[int, float]:
    """(replicas, CPUs) one pool counts for."""
    record = pool.record
    if record.status == AgentStatus.ACTIVE:
        count = max(ceiling(record.spec, record.desired_replicas), len(pool.replicas))
    else:
        count = len(pool.replicas)
    return count, count * record.spec.resources.num_cpus


def check_capacity(
    pools: Iterable[_Pool], spec: AgentSpec, desired: int, quotas: Quotas, tenant: str
) -> None:
    """Raises: QuotaExceeded (replicas or cpus) when `spec`'s pool at `desired` replicas,
    beside every other pool of the tenant, would pass the tenant's quota."""
    others = [held(p) for p in pools if p.record.agent_id != spec.agent_id]
    replicas = sum(r for r, _ in others)
    cpus = sum(c for _, c in others)
    want = ceiling(spec, desired)
    if replicas + want > quotas.replicas:
        raise QuotaExceeded(
            "replicas",
            quotas.replicas,
            f"tenant {tenant!r} runs {replicas} replicas elsewhere; agent {spec.agent_id!r} "
            f"asks for {want}",
        )
    want_cpus = want * spec.resources.num_cpus
    if want_cpus and cpus + want_cpus > quotas.cpus:
        raise QuotaExceeded(
            "cpus",
            quotas.cpus,
            f"tenant {tenant!r} reserves {cpus:g} CPUs elsewhere; agent {spec.agent_id!r} "
            f"asks for {want_cpus:g}",
        )


__all__ = ["ceiling", "check_capacity", "held"]
