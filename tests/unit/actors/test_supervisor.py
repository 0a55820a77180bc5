"""The supervisor core with a fake launcher and the real registry: pools are created,
kept at size, scaled, restored after a restart, and routed to by version."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from actors.models import AgentSpec, AgentStatus
from actors.registry import AgentRegistry
from actors.supervisor import Supervisor
from cluster.errors import AgentNotFound, SpecInvalid
from cluster.store import Store
from tests.unit.actors.fakes import FakeLauncher

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def echo(version: str = "1.0.0", low: int = 1, high: int = 4, **fields: Any) -> AgentSpec:
    return AgentSpec(
        name="echo",
        version=version,
        capabilities=["test.echo"],
        entrypoint="tests.fixtures.agents:echo",
        replicas={"min": low, "max": high},
        **fields,
    )


@pytest.fixture
def registry(store: Store) -> AgentRegistry:
    return AgentRegistry(store)


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def supervisor(registry: AgentRegistry, launcher: FakeLauncher) -> Supervisor:
    return Supervisor(registry, launcher)


def live_names(launcher: FakeLauncher, agent_id: str) -> list[str]:
    return sorted(n for n in launcher.live if f"/{agent_id}/" in n)


def test_create_agent_registers_with_skills_and_starts_a_replica(
    supervisor: Supervisor, registry: AgentRegistry, launcher: FakeLauncher
) -> None:
    record = run(supervisor.create_agent(echo()))
    stored = registry.get("echo@1.0.0")
    assert stored == record
    assert stored.desired_replicas == 1
    assert stored.skills["test.echo"].input_schema["required"] == ["text"]
    assert live_names(launcher, "echo@1.0.0") == [f"{registry.store.tenant}/echo@1.0.0/1"]
    health = supervisor.monitor_health()
    assert health["status"] == "ok"
    assert health["pools"]["echo@1.0.0"]["running"] == 1


def test_create_agent_starts_min_replicas_each_under_its_own_name(
    supervisor: Supervisor, launcher: FakeLauncher
) -> None:
    run(supervisor.create_agent(echo(low=3)))
    assert len(live_names(launcher, "echo@1.0.0")) == 3
    assert len(launcher.started) == 3  # none started twice, none leaked
    assert supervisor.monitor_health()["pools"]["echo@1.0.0"]["running"] == 3


def test_applying_the_same_spec_again_changes_nothing(
    supervisor: Supervisor, launcher: FakeLauncher
) -> None:
    first = run(supervisor.create_agent(echo()))
    again = run(supervisor.create_agent(echo()))
    assert again.registered_at == first.registered_at
    assert len(launcher.started) == 1
    assert launcher.stopped == []


def test_bad_spec_is_refused_and_leaves_nothing_behind(
    supervisor: Supervisor, registry: AgentRegistry, launcher: FakeLauncher
) -> None:
    bad = AgentSpec(
        name="stray",
        capabilities=["test.echo", "test.missing"],
        entrypoint="tests.fixtures.agents:Stray",
    )
    with pytest.raises(SpecInvalid) as caught:
        run(supervisor.create_agent(bad))
    assert "capabilities: no skill serves 'test.missing'" in caught.value.problems
    assert registry.all() == []
    assert launcher.live == {}
    with pytest.raises(AgentNotFound):
        supervisor.get_pool("test.echo")


def test_rejected_re_apply_leaves_the_running_pool_alone(
    supervisor: Supervisor, launcher: FakeLauncher
) -> None:
    run(supervisor.create_agent(echo()))
    running = dict(launcher.live)
    broken = echo().model_copy(update={"entrypoint": "tests.fixtures.agents:untyped"})
    with pytest.raises(SpecInvalid):
        run(supervisor.create_agent(broken))
    assert launcher.live == running
    assert supervisor.get_pool("test.echo").replicas == running


def test_reconcile_replaces_a_dead_replica_and_counts_the_restart(
    supervisor: Supervisor, launcher: FakeLauncher
) -> None:
    run(supervisor.create_agent(echo()))
    (name,) = live_names(launcher, "echo@1.0.0")
    dead = launcher.kill(name)
    run(supervisor.reconcile())
    pool = supervisor.monitor_health()["pools"]["echo@1.0.0"]
    assert (pool["running"], pool["restarts"]) == (1, 1)
    replacement = next(iter(supervisor.get_pool("test.echo").replicas.values()))
    assert replacement is not dead and replacement.alive
    run(supervisor.reconcile())  # a healthy pool is left alone
    assert supervisor.monitor_health()["pools"]["echo@1.0.0"]["restarts"] == 1
    assert len(launcher.started) == 2


def test_scale_up_and_down(
    supervisor: Supervisor, registry: AgentRegistry, launcher: FakeLauncher
) -> None:
    run(supervisor.create_agent(echo()))
    run(supervisor.scale_agents("echo@1.0.0", 4))
    assert len(live_names(launcher, "echo@1.0.0")) == 4
    assert registry.get("echo@1.0.0").desired_replicas == 4
    run(supervisor.scale_agents("echo@1.0.0", 2))
    assert len(live_names(launcher, "echo@1.0.0")) == 2
    assert len(launcher.stopped) == 2
    assert len(supervisor.get_pool("test.echo").replicas) == 2


def test_scale_outside_min_max_is_refused(supervisor: Supervisor, launcher: FakeLauncher) -> None:
    run(supervisor.create_agent(echo(high=2)))
    with pytest.raises(SpecInvalid, match=r"replicas: 3 is outside 1\.\.2"):
        run(supervisor.scale_agents("echo@1.0.0", 3))
    assert len(launcher.live) == 1


def test_scale_unknown_agent_suggests_near_ids(supervisor: Supervisor) -> None:
    run(supervisor.create_agent(echo()))
    with pytest.raises(AgentNotFound, match=r"did you mean 'echo@1\.0\.0'"):
        run(supervisor.scale_agents("echo@1.0.1", 2))


def test_restore_adopts_live_replicas_and_starts_missing_ones(
    registry: AgentRegistry, launcher: FakeLauncher
) -> None:
    first = Supervisor(registry, launcher)
    run(first.create_agent(echo()))
    run(first.create_agent(echo(version="2.0.0")))
    (survivor,) = live_names(launcher, "echo@1.0.0")
    adopted = launcher.live[survivor]
    launcher.kill(live_names(launcher, "echo@2.0.0")[0])  # died while no supervisor watched
    registry.set_desired_replicas("echo@1.0.0", 3)  # recorded, never acted upon

    restarted = Supervisor(registry, launcher)  # the old core is gone with its memory
    run(restarted.restore())

    v1 = restarted.get_pool("test.echo", "echo@1.0.0")
    assert len(v1.replicas) == 3
    assert v1.replicas[survivor] is adopted  # adopted, not restarted
    assert len(set(v1.replicas)) == 3 and all(r.alive for r in v1.replicas.values())
    v2 = restarted.get_pool("test.echo", "echo@2.0.0")
    assert len(v2.replicas) == 1 and all(r.alive for r in v2.replicas.values())
    health = restarted.monitor_health()
    assert health["status"] == "ok"
    assert {a: p["running"] for a, p in health["pools"].items()} == {
        "echo@1.0.0": 3,
        "echo@2.0.0": 1,
    }


def test_restore_does_not_adopt_another_tenants_replicas(
    store: Store, launcher: FakeLauncher
) -> None:
    mine = Supervisor(AgentRegistry(store), launcher)
    theirs = Supervisor(AgentRegistry(store.for_tenant(f"{store.tenant}-other")), launcher)
    run(theirs.create_agent(echo()))
    AgentRegistry(store).register_agent(theirs.registry.get("echo@1.0.0"))
    run(mine.restore())
    adopted = mine.get_pool("test.echo").replicas
    assert len(adopted) == 1
    assert all(name.startswith(f"{store.tenant}/") for name in adopted)
    assert len(launcher.live) == 2


def test_get_pool_picks_the_newest_active_version(supervisor: Supervisor) -> None:
    for version in ("1.0.0", "2.0.0", "1.5.0"):
        run(supervisor.create_agent(echo(version=version, max_concurrency=3, max_queued=5)))
    view = supervisor.get_pool("test.echo")
    assert view.agent_id == "echo@2.0.0"
    assert (view.max_concurrency, view.max_queued, view.capacity) == (3, 5, 8)
    assert view.schemas["test.echo"]["required"] == ["text"]
    assert supervisor.get_pool("test.echo", "echo@<2").agent_id == "echo@1.5.0"
    assert supervisor.get_pool("test.echo", "echo@1.0.0").agent_id == "echo@1.0.0"
    assert supervisor.get_pool("test.echo", "echo").agent_id == "echo@2.0.0"


def test_get_pool_unknown_capability_suggests_near_names(supervisor: Supervisor) -> None:
    run(supervisor.create_agent(echo()))
    with pytest.raises(AgentNotFound) as caught:
        supervisor.get_pool("test.ecko")
    assert "did you mean 'test.echo'" in str(caught.value)
    with pytest.raises(AgentNotFound):
        supervisor.get_pool("test.echo", "echo@>=2")


def test_disabled_agent_is_not_routable_and_its_replicas_stop(
    supervisor: Supervisor, launcher: FakeLauncher
) -> None:
    run(supervisor.create_agent(echo()))
    run(supervisor.create_agent(echo(version="2.0.0")))
    run(supervisor.update_agent_status("echo@2.0.0", AgentStatus.DISABLED))
    assert supervisor.get_pool("test.echo").agent_id == "echo@1.0.0"
    assert live_names(launcher, "echo@2.0.0") == []
    run(supervisor.update_agent_status("echo@1.0.0", AgentStatus.DISABLED))
    with pytest.raises(AgentNotFound):
        supervisor.get_pool("test.echo")
    run(supervisor.update_agent_status("echo@2.0.0", AgentStatus.ACTIVE))
    assert supervisor.get_pool("test.echo").agent_id == "echo@2.0.0"
    assert len(live_names(launcher, "echo@2.0.0")) == 1


def test_draining_agent_keeps_its_replicas_but_gets_no_new_tasks(
    supervisor: Supervisor, launcher: FakeLauncher
) -> None:
    run(supervisor.create_agent(echo()))
    run(supervisor.update_agent_status("echo@1.0.0", AgentStatus.DRAINING))
    with pytest.raises(AgentNotFound):
        supervisor.get_pool("test.echo")
    run(supervisor.reconcile())
    assert len(live_names(launcher, "echo@1.0.0")) == 1


def test_remove_agent_stops_its_pool_and_forgets_it(
    supervisor: Supervisor, registry: AgentRegistry, launcher: FakeLauncher
) -> None:
    run(supervisor.create_agent(echo()))
    run(supervisor.remove_agent("echo@1.0.0"))
    assert launcher.live == {}
    assert registry.all() == []
    with pytest.raises(AgentNotFound):
        run(supervisor.remove_agent("echo@1.0.0"))


def test_capability_of_a_disabled_agent_says_it_is_disabled(supervisor: Supervisor) -> None:
    run(supervisor.create_agent(echo()))
    run(supervisor.update_agent_status("echo@1.0.0", AgentStatus.DISABLED))
    with pytest.raises(AgentNotFound) as caught:
        supervisor.get_pool("test.echo")
    assert "did you mean 'test.echo'" not in str(caught.value)
    assert "echo@1.0.0" in str(caught.value) and "disabled" in str(caught.value)


def test_mistyped_agent_selector_suggests_the_agent_name(supervisor: Supervisor) -> None:
    run(supervisor.create_agent(echo()))
    with pytest.raises(AgentNotFound) as caught:
        supervisor.get_pool("test.echo", "ecko")
    assert "'echo'" in str(caught.value) or "'echo@1.0.0'" in str(caught.value)
