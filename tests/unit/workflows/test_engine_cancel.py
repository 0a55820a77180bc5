"""Joins that end a fan-out early, cancellation through the dispatcher, and pause holding
new items and retries: the engine with its fake dispatcher (no Ray)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from cluster.errors import Conflict
from cluster.store import Store
from tests.unit.workflows.test_engine import make, spec
from workflows.engine import WorkflowEngine
from workflows.execution import ExecutionStatus, StepStatus


async def until(check: Callable[[], Any], what: str, timeout_s: float = 5) -> Any:
    """Poll `check` on the event loop until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s}s")
        await asyncio.sleep(0.005)
    return value


async def settle() -> None:
    """Let every task that can run do so (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


class Items:
    """A skill whose call for item x returns x once `release(x)` (or at once if `free`)."""

    def __init__(self, free: Iterable[int] = (), failing: Iterable[int] = ()) -> None:
        self.free, self.failing = set(free), set(failing)
        self.gates: dict[int, asyncio.Event] = {}
        self.started: list[int] = []

    def gate(self, x: int) -> asyncio.Event:
        return self.gates.setdefault(x, asyncio.Event())

    def release(self, x: int) -> None:
        self.gate(x).set()

    async def __call__(self, data: dict[str, Any]) -> Any:
        x = data["x"]
        self.started.append(x)
        if x in self.failing:
            raise ValueError(f"item {x} fails")
        if x not in self.free:
            await self.gate(x).wait()
        return x


def fan(join: Any, n: int, max_parallel: int = 10, then: bool = False) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{
        "id": "each", "uses": "items", "with": {"x": "${{ item }}"},
        "for_each": {"items": f"[{', '.join(map(str, range(n)))}]", "join": join,
                     "max_parallel": max_parallel},
    }]  # fmt: skip
    if then:
        steps.append({"id": "after", "uses": "after", "needs": "each"})
    return {"name": "fan", "steps": steps}


async def run_fan(
    store: Store, tmp_path: Path, items: Items, join: Any, n: int
) -> tuple[WorkflowEngine, Any, Any]:
    engine, dispatcher, defs = make(store, tmp_path, {"items": items})
    defs.define(spec(fan(join, n)))
    done = await engine.wait((await engine.execute("fan")).id, 10)
    return engine, dispatcher, done


async def test_wcp9_join_any_ends_at_the_first_item_and_cancels_the_rest(
    store: Store, tmp_path: Path
) -> None:
    engine, dispatcher, done = await run_fan(store, tmp_path, Items(free={1}), "any", 3)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["each"].output == [None, 1, None]
    assert sorted(dispatcher.cancelled) == ["each[0]", "each[2]"]
    assert done.steps["each[0]"].status == StepStatus.CANCELLED
    kept = engine.store.load(done.id)
    assert kept.steps["each[2]"].status == StepStatus.CANCELLED
    assert kept.steps["each[1]"].status == StepStatus.SUCCEEDED


async def test_wcp34_join_k_ends_when_k_items_succeeded(store: Store, tmp_path: Path) -> None:
    _, dispatcher, done = await run_fan(store, tmp_path, Items(free={0, 2}), 2, 4)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["each"].output == [0, None, 2, None]
    assert sorted(dispatcher.cancelled) == ["each[1]", "each[3]"]


async def test_join_all_fails_at_the_first_failure_and_cancels_the_rest(
    store: Store, tmp_path: Path
) -> None:
    _, dispatcher, done = await run_fan(store, tmp_path, Items(failing={1}), "all", 3)
    assert done.status == ExecutionStatus.FAILED
    assert done.error and "0 of 3 items succeeded, 3 needed; first error: item 1 fails" in (
        done.error.message
    )
    assert sorted(dispatcher.cancelled) == ["each[0]", "each[2]"]


async def test_join_k_fails_as_soon_as_too_few_items_can_succeed(
    store: Store, tmp_path: Path
) -> None:
    _, dispatcher, done = await run_fan(store, tmp_path, Items(failing={0, 1}), 2, 3)
    assert done.status == ExecutionStatus.FAILED
    assert dispatcher.cancelled == ["each[2]"]


async def test_wcp12_join_none_goes_on_while_the_items_run(store: Store, tmp_path: Path) -> None:
    items = Items()
    after_ran = asyncio.Event()

    async def after(data: dict[str, Any]) -> Any:
        after_ran.set()
        return "after"

    engine, _, defs = make(store, tmp_path, {"items": items, "after": after})
    defs.define(spec(fan("none", 2, then=True)))
    execution = await engine.execute("fan")
    await asyncio.wait_for(after_ran.wait(), 5)  # while both items still wait
    assert items.started == [0, 1]
    assert engine.get(execution.id).status == ExecutionStatus.RUNNING  # it waits for them
    items.release(0)
    items.release(1)
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["each"].output == {"started": 2}
    assert [done.steps[f"each[{i}]"].output for i in (0, 1)] == [0, 1]


async def test_cancelling_an_execution_cancels_its_running_steps_through_the_dispatcher(
    store: Store, tmp_path: Path
) -> None:
    items = Items()
    engine, dispatcher, defs = make(store, tmp_path, {"items": items})
    defs.define(spec(fan("all", 2)))
    execution = await engine.execute("fan")
    await until(lambda: len(items.started) == 2, "both items started")
    await engine.cancel(execution.id, by="ops")
    assert sorted(dispatcher.cancelled) == ["each[0]", "each[1]"]
    kept = engine.store.load(execution.id)
    assert kept.status == ExecutionStatus.CANCELLED
    assert kept.steps["each[0]"].status == StepStatus.CANCELLED


async def test_a_step_timeout_cancels_the_attempt_through_the_dispatcher(
    store: Store, tmp_path: Path
) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"items": Items()})
    defs.define(spec({"name": "slow", "steps": [
        {"id": "a", "uses": "items", "with": {"x": 1}, "timeout_s": 0.05}]}))  # fmt: skip
    done = await engine.wait((await engine.execute("slow")).id, 10)
    error = done.steps["a"].error
    assert done.status == ExecutionStatus.FAILED and error and error.type == "TaskTimeout"
    assert dispatcher.cancelled == ["a"]


async def test_pause_holds_a_running_fan_out_and_resume_goes_on(
    store: Store, tmp_path: Path
) -> None:
    items = Items()
    engine, _, defs = make(store, tmp_path, {"items": items})
    defs.define(spec(fan("all", 3, max_parallel=1)))
    execution = await engine.execute("fan")
    await until(lambda: items.started == [0], "item 0 started")
    await engine.pause(execution.id)
    items.release(0)
    await until(
        lambda: engine.get(execution.id).steps["each[0]"].status == StepStatus.SUCCEEDED,
        "item 0 finished",
    )
    await settle()
    assert items.started == [0]  # no new item while paused
    for x in (1, 2):
        items.release(x)
    await engine.resume(execution.id)
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and items.started == [0, 1, 2]


@pytest.mark.parametrize("paused", [True, False])
async def test_pause_holds_a_retry(store: Store, tmp_path: Path, paused: bool) -> None:
    calls = 0

    async def flaky(data: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            if paused:
                await engine.pause(dispatcher.requests[-1].execution_id)
            raise ConnectionError("once")
        return "ok"

    engine, dispatcher, defs = make(store, tmp_path, {"flaky": flaky})
    defs.define(spec({"name": "retry", "steps": [
        {"id": "a", "uses": "flaky", "retry": {"attempts": 2, "backoff_s": 0}}]}))  # fmt: skip
    execution = await engine.execute("retry")
    if paused:
        await until(lambda: engine.get(execution.id).status == ExecutionStatus.PAUSED, "paused")
        await settle()
        assert calls == 1  # the retry waits
        await engine.resume(execution.id)
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and calls == 2


async def test_wcp19_cancelling_one_step_stops_its_work_and_the_rest_goes_on(
    store: Store, tmp_path: Path
) -> None:
    items = Items(free={1})
    engine, dispatcher, defs = make(store, tmp_path, {"items": items})
    defs.define(spec({"name": "branches", "steps": [
        {"id": "a", "uses": "items", "with": {"x": 1}},
        {"id": "b", "uses": "items", "with": {"x": 2}},
        {"id": "c", "uses": "items", "needs": ["a", "b"], "trigger_rule": "all_done",
         "with": {"x": 1}},
        {"id": "d", "uses": "items", "needs": ["b"], "with": {"x": 1}},
    ]}))  # fmt: skip
    execution = await engine.execute("branches")
    await until(lambda: 2 in items.started, "b to run")
    await engine.cancel_step(execution.id, "b", by="ops", reason="not needed")
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert dispatcher.cancelled == ["b"]
    assert {k: s.status for k, s in done.steps.items()} == {
        "a": StepStatus.SUCCEEDED, "b": StepStatus.CANCELLED,
        "c": StepStatus.SUCCEEDED, "d": StepStatus.SKIPPED,
    }  # fmt: skip
    with pytest.raises(Conflict, match="is succeeded; it is not running"):
        await engine.cancel_step(execution.id, "b")


async def test_skipping_a_step_that_has_not_started_skips_it_and_its_dependents(
    store: Store, tmp_path: Path
) -> None:
    items = Items(free={2})
    engine, dispatcher, defs = make(store, tmp_path, {"items": items})
    defs.define(spec({"name": "chain", "steps": [
        {"id": "a", "uses": "items", "with": {"x": 1}},
        {"id": "b", "uses": "items", "needs": "a", "with": {"x": 2}},
        {"id": "c", "uses": "items", "needs": "b", "with": {"x": 2}},
        {"id": "d", "uses": "items", "needs": "b", "trigger_rule": "none_failed",
         "with": {"x": 2}},
    ]}))  # fmt: skip
    execution = await engine.execute("chain")
    await until(lambda: 1 in items.started, "a to run")
    with pytest.raises(Conflict, match="no step 'zz'"):
        await engine.skip_step(execution.id, "zz")
    await engine.skip_step(execution.id, "b", by="ops")
    with pytest.raises(Conflict, match=r"'b' of execution \w+ is skipped"):
        await engine.cancel_step(execution.id, "b")
    items.release(1)
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert {k: s.status for k, s in done.steps.items()} == {
        "a": StepStatus.SUCCEEDED, "b": StepStatus.SKIPPED,
        "c": StepStatus.SKIPPED, "d": StepStatus.SUCCEEDED,
    }  # fmt: skip
    assert [r.step_id for r in dispatcher.requests] == ["a", "d"]
