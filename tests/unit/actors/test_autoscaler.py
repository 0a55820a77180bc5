"""Pool autoscaling: the policy core with a fake clock, and the supervisor applying it to
pools of fake replicas (load from their probes, scale to zero, waking, asking Ray's
autoscaler for room)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from actors.autoscaler import PoolAutoscaler, resource_bundle
from actors.messages import DomainEvent
from actors.models import AgentSpec, Autoscaling, Replicas
from actors.registry import AgentRegistry
from actors.supervisor import Supervisor
from cluster import metrics
from cluster.store import Store
from tests.unit.actors.fakes import FakeLauncher
from tests.unit.waiting import until, until_some


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scaler(
    clock: Clock, low: int = 1, high: int = 8, target: float = 2, up: float = 0, down: float = 10,
    idle: float | None = None,
) -> PoolAutoscaler:  # fmt: skip
    policy = Autoscaling(target_inflight_per_replica=target, upscale_delay_s=up,
                         downscale_delay_s=down, idle_to_zero_s=idle)  # fmt: skip
    return PoolAutoscaler(policy, Replicas(min=low, max=high), clock)


def test_wants_load_over_target_within_min_and_max() -> None:
    s = scaler(Clock(), low=2, high=5, target=4)
    assert [s.wanted(n) for n in (0, 1, 8, 9, 17, 100)] == [2, 2, 2, 3, 5, 5]


def test_grows_only_after_the_upscale_delay_and_with_the_latest_load() -> None:
    clock = Clock()
    s = scaler(clock, target=2, up=3)
    assert s.decide(current=1, in_flight=6) is None
    clock.now += 2
    assert s.decide(current=1, in_flight=8) is None
    clock.now += 1
    decision = s.decide(current=1, in_flight=8)
    assert decision is not None and (decision.desired, decision.reason) == (4, "load")


def test_a_dip_below_the_want_restarts_the_upscale_delay() -> None:
    clock = Clock()
    s = scaler(clock, target=2, up=3)
    assert s.decide(1, 6) is None
    clock.now += 2
    assert s.decide(1, 1) is None  # load fell back: the pool is right again
    clock.now += 2
    assert s.decide(1, 6) is None  # wants more again: the delay starts over
    clock.now += 3
    assert s.decide(1, 6) is not None


def test_shrinks_after_the_downscale_delay_but_not_below_min() -> None:
    clock = Clock()
    s = scaler(clock, low=2, target=2, down=10)
    assert s.decide(current=6, in_flight=0) is None
    clock.now += 9.9
    assert s.decide(6, 0) is None
    clock.now += 0.1
    decision = s.decide(6, 0)
    assert decision is not None and decision.desired == 2
    assert decision.as_event_data() == {
        "from": 6, "to": 2, "in_flight": 0, "waiting": 0, "reason": "load",
    }  # fmt: skip


def test_an_idle_pool_keeps_one_replica_without_idle_to_zero() -> None:
    clock = Clock()
    s = scaler(clock, low=0, down=0)
    clock.now += 10_000
    assert s.wanted(0) == 1
    assert s.decide(1, 0) is None


def test_an_idle_pool_goes_to_zero_after_idle_to_zero_and_wakes_at_once() -> None:
    clock = Clock()
    s = scaler(clock, low=0, down=60, up=30, idle=5)
    assert s.decide(current=1, in_flight=1) is None
    clock.now += 4.9
    assert s.decide(1, 0) is None  # idle, but not for 5 s yet
    clock.now += 0.2
    to_zero = s.decide(1, 0)
    assert to_zero is not None and (to_zero.desired, to_zero.reason) == (0, "idle")
    clock.now += 100
    woken = s.decide(current=0, in_flight=0, waiting=1)  # no upscale delay for a waiter
    assert woken is not None and (woken.desired, woken.reason) == (1, "wake")


def test_policy_is_checked_against_the_spec() -> None:
    base: dict[str, Any] = {"name": "a", "capabilities": ["x.y"], "entrypoint": "m:f"}
    with pytest.raises(ValidationError, match="must not exceed max_concurrency"):
        AgentSpec(**base, max_concurrency=4, autoscaling={"target_inflight_per_replica": 8})
    with pytest.raises(ValidationError, match=r"idle_to_zero_s needs replicas\.min: 0"):
        AgentSpec(**base, autoscaling={"idle_to_zero_s": 60})
    with pytest.raises(ValidationError, match="extra"):
        AgentSpec(**base, autoscaling={"target": 2})
    with pytest.raises(ValidationError, match="label"):
        AgentSpec(**base, resources={"node_labels": {"zone": "not a value!"}})


def test_resource_bundle_names_ray_resources_and_drops_zeros() -> None:
    spec = AgentSpec(name="a", capabilities=["x.y"], entrypoint="m:f",
                     resources={"num_cpus": 1, "memory_mb": 2, "custom": {"worker": 0.5}})  # fmt: skip
    assert resource_bundle(spec) == {"CPU": 1, "memory": 2 * 1024 * 1024, "worker": 0.5}


# -- the supervisor applying it --------------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.seen: list[DomainEvent] = []

    async def publish(self, event: DomainEvent) -> str:
        self.seen.append(event)
        return str(len(self.seen))


def spec(**autoscaling: Any) -> AgentSpec:
    return AgentSpec(
        name="echo", capabilities=["test.echo"], entrypoint="tests.fixtures.agents:echo",
        replicas={"min": 0, "max": 4}, max_concurrency=8,
        autoscaling={"target_inflight_per_replica": 2, "downscale_delay_s": 0, **autoscaling},
        resources={"num_cpus": 1},
    )  # fmt: skip


@pytest.fixture
def parts(store: Store) -> tuple[Supervisor, FakeLauncher, Events]:
    launcher, events = FakeLauncher(), Events()
    return Supervisor(AgentRegistry(store), launcher, events), launcher, events


def test_load_reported_by_replicas_grows_and_shrinks_the_pool(
    parts: tuple[Supervisor, FakeLauncher, Events],
) -> None:
    supervisor, launcher, events = parts

    async def scenario() -> None:
        await supervisor.create_agent(spec())
        next(iter(launcher.live.values())).in_flight = 7
        await supervisor.reconcile()
        assert len(launcher.live) == 4  # ceil(7 / 2), within max
        assert supervisor.registry.get("echo@1.0.0").desired_replicas == 4
        for replica in launcher.live.values():
            replica.in_flight = 0
        kept, draining = launcher.started[0], launcher.started[-1]
        kept.in_flight = draining.in_flight = 1  # load 2: one replica is enough
        await supervisor.reconcile()
        assert list(supervisor.get_pool("test.echo").replicas) == [kept.name]
        assert len(launcher.live) == 4  # the rest retire: no new tasks, stopped once idle
        assert launcher.stopped == []
        supervisor.retire_grace_s = 0  # callers' pool views have expired
        await supervisor.reconcile()
        assert sorted(launcher.live) == sorted([kept.name, draining.name])  # still working
        draining.in_flight = 0
        await supervisor.reconcile()
        assert list(launcher.live.values()) == [kept]

    asyncio.run(scenario())
    scaled = [e.data for e in events.seen if e.type == "agent.autoscaled"]
    assert [(d["from"], d["to"]) for d in scaled] == [(1, 4), (4, 1)]


def test_an_idle_pool_scales_to_zero_and_a_caller_wakes_it(
    parts: tuple[Supervisor, FakeLauncher, Events],
) -> None:
    supervisor, launcher, events = parts

    supervisor.retire_grace_s = 0

    async def scenario() -> None:
        await supervisor.create_agent(spec(idle_to_zero_s=0.05))

        async def at_zero() -> bool:
            await supervisor.reconcile()
            return launcher.live == {}

        await until_some(at_zero, what="the idle pool stopped")
        view = supervisor.get_pool("test.echo")
        assert view.replicas == {} and view.waking
        assert supervisor.wake.is_set()  # the reconcile loop runs at once
        await supervisor.reconcile()
        assert len(supervisor.get_pool("test.echo").replicas) == 1

    woken_before = metrics.POOL_AUTOSCALED.value(agent="echo@1.0.0", outcome="wake") or 0
    asyncio.run(scenario())
    reasons = [e.data["reason"] for e in events.seen if e.type == "agent.autoscaled"]
    assert reasons == ["idle", "wake"]
    assert metrics.POOL_AUTOSCALED.value(agent="echo@1.0.0", outcome="wake") == woken_before + 1


def test_replicas_waiting_for_resources_ask_rays_autoscaler_for_room(
    parts: tuple[Supervisor, FakeLauncher, Events],
) -> None:
    supervisor, launcher, _ = parts

    async def scenario() -> None:
        await supervisor.create_agent(spec(downscale_delay_s=60))
        await supervisor.reconcile()
        assert launcher.requests == []  # everything placed: nothing asked
        await supervisor.scale_agents("echo@1.0.0", 3)
        for replica in launcher.started[1:]:
            replica.pending = True
        await supervisor.reconcile()
        assert launcher.requests == [[{"CPU": 1}] * 3]
        assert supervisor.monitor_health()["pools"]["echo@1.0.0"]["pending"] == 2
        await supervisor.reconcile()
        assert len(launcher.requests) == 1  # the same request is not repeated
        await supervisor.remove_agent("echo@1.0.0")
        await supervisor.reconcile()
        assert launcher.requests[-1] == []  # withdrawn, so idle nodes can go

    asyncio.run(scenario())


def test_a_replica_reports_tasks_waiting_for_a_slot_as_queued() -> None:
    from actors.agent import AgentRuntime
    from actors.models import Task

    slow = AgentSpec(name="s", capabilities=["test.slow"], entrypoint="tests.fixtures.agents:slow",
                     max_concurrency=1)  # fmt: skip
    runtime = AgentRuntime.build(slow, "t/s@1.0.0/1")

    async def scenario() -> None:
        task = Task(capability="test.slow", input={"seconds": 0.2})
        running = [asyncio.create_task(runtime.run(task)) for _ in range(3)]
        await until(lambda: (runtime.health().in_flight, runtime.health().queued) == (1, 2))
        assert all(r.ok for r in await asyncio.gather(*running))
        assert (runtime.health().in_flight, runtime.health().queued) == (0, 0)

    asyncio.run(scenario())
