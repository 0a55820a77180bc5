"""The tenant's replica and CPU quotas with a fake launcher and the real registry: an
apply or a scale past them is refused, naming the limit, and starts nothing."""

from __future__ import annotations

import asyncio

import pytest

from actors.registry import AgentRegistry
from actors.supervisor import Supervisor
from cluster.errors import QuotaExceeded
from cluster.quotas import Quotas
from cluster.store import Store
from tests.unit.actors.fakes import FakeLauncher
from tests.unit.actors.test_supervisor import echo, live_names


def make(store: Store, quotas: Quotas) -> tuple[Supervisor, FakeLauncher]:
    launcher = FakeLauncher()
    return Supervisor(AgentRegistry(store), launcher, quotas=quotas), launcher


def test_scaling_past_the_replica_quota_is_refused_and_starts_nothing(store: Store) -> None:
    supervisor, launcher = make(store, Quotas(replicas=3))

    async def scenario() -> None:
        await supervisor.create_agent(echo("1.0.0", low=2, high=4))
        with pytest.raises(QuotaExceeded) as refused:
            await supervisor.scale_agents("echo@1.0.0", 4)
        assert refused.value.limit == "replicas" and "'replicas' (3)" in refused.value.message
        assert len(live_names(launcher, "echo@1.0.0")) == 2
        await supervisor.scale_agents("echo@1.0.0", 3)  # at the quota: allowed
        assert len(live_names(launcher, "echo@1.0.0")) == 3

    asyncio.run(scenario())


def test_applying_another_agent_counts_the_tenants_other_pools(store: Store) -> None:
    supervisor, launcher = make(store, Quotas(replicas=3))

    async def scenario() -> None:
        await supervisor.create_agent(echo("1.0.0", low=2, high=4))
        with pytest.raises(QuotaExceeded):
            await supervisor.create_agent(echo("2.0.0", low=2, high=4))
        assert live_names(launcher, "echo@2.0.0") == []
        with pytest.raises(QuotaExceeded):  # an autoscaled pool counts at its max
            await supervisor.create_agent(
                echo("3.0.0", low=1, high=2, autoscaling={"target_inflight_per_replica": 1})
            )
        assert live_names(launcher, "echo@3.0.0") == []
        await supervisor.create_agent(echo("4.0.0", low=1, high=1))

    asyncio.run(scenario())


def test_the_cpu_quota_counts_each_replicas_cpus(store: Store) -> None:
    supervisor, launcher = make(store, Quotas(cpus=1.0))

    async def scenario() -> None:
        await supervisor.create_agent(echo("1.0.0", low=2, high=4, resources={"num_cpus": 0.5}))
        with pytest.raises(QuotaExceeded) as refused:
            await supervisor.scale_agents("echo@1.0.0", 3)
        assert refused.value.limit == "cpus"
        assert len(live_names(launcher, "echo@1.0.0")) == 2

    asyncio.run(scenario())
