"""Version pinning: an execution keeps the agent versions it started with, through an
upgrade mid-execution and a restart (fake dispatcher that says which version is newest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.store import Store
from tests.unit.workflows.test_engine import FakeDispatcher, _crash, make, spec
from tests.unit.workflows.test_engine_cancel import Items, until
from workflows.engine import WorkflowEngine
from workflows.execution import ExecutionStatus


class Versions(FakeDispatcher):
    """Knows the newest version of each target, which a test can change (an upgrade)."""

    newest: dict[str, str] = {}

    async def pin(self, kind: str, target: str) -> str | None:
        return self.newest.get(target)


def pinning(engine: WorkflowEngine, dispatcher: FakeDispatcher) -> Versions:
    versions = Versions(dispatcher.skills)
    engine.dispatcher = versions
    return versions


def two_steps(mode: str = "pinned") -> dict[str, Any]:
    return {"name": "two", "agent_versions": mode, "steps": [
        {"id": "a", "uses": "items", "with": {"x": 1}},
        {"id": "b", "uses": "items", "needs": "a", "with": {"x": 2}},
        {"id": "c", "uses": "late", "needs": "b"},
    ]}  # fmt: skip


async def _late(data: dict[str, Any]) -> Any:
    return "late"


async def test_an_upgrade_mid_execution_does_not_move_its_later_steps(
    store: Store, tmp_path: Path
) -> None:
    items = Items(free={2})
    engine, plain, defs = make(store, tmp_path, {"items": items, "late": _late})
    dispatcher = pinning(engine, plain)
    Versions.newest = {"items": "worker@1.0.0"}  # nothing serves `late` yet
    defs.define(spec(two_steps()))
    execution = await engine.execute("two")
    await until(lambda: 1 in items.started, "a to run")
    Versions.newest = {"items": "worker@2.0.0", "late": "later@3.0.0"}  # upgraded
    await until(
        lambda: engine.store.load(execution.id).pins == {"items": "worker@1.0.0"},
        "the pins to be stored",
    )
    _crash(engine, execution.id)  # and the supervisor restarts
    fresh, plain, _ = make(store, tmp_path, {"items": items, "late": _late})
    dispatcher = pinning(fresh, plain)
    await fresh.recover()
    items.release(1)
    done = await fresh.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert {r.step_id: r.pinned for r in dispatcher.requests} == {
        "a": "worker@1.0.0", "b": "worker@1.0.0", "c": "later@3.0.0"
    }  # fmt: skip
    kept = fresh.store.load(execution.id)
    assert kept.pins == {"items": "worker@1.0.0", "late": "later@3.0.0"}
    assert "execution.pinned" in [e.type for _, e in fresh.store.events(execution.id)]


async def test_latest_routes_each_dispatch_to_the_newest(store: Store, tmp_path: Path) -> None:
    items = Items(free={1, 2})
    engine, plain, defs = make(store, tmp_path, {"items": items, "late": _late})
    dispatcher = pinning(engine, plain)
    Versions.newest = {"items": "worker@1.0.0"}
    defs.define(spec(two_steps("latest")))
    done = await engine.wait((await engine.execute("two")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.pins == {}
    assert {r.pinned for r in dispatcher.requests} == {None}
