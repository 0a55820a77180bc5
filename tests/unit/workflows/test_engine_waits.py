"""Durable timers, signals (with deferred choice) and the workflow's timeout, on the engine
with its fake dispatcher and a fake clock: nothing here waits for real time to pass."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cluster.errors import Conflict, InputInvalid
from cluster.store import Store
from tests.unit.workflows.test_engine import _crash, make, spec
from tests.unit.workflows.test_engine_cancel import Items, settle, until
from workflows.engine import WorkflowEngine
from workflows.execution import ExecutionStatus, StepStatus
from workflows.waits import iso

START = 1_900_000_000.0


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.t = now
        self._tick = asyncio.Event()
        self.sleeping = 0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, moment: float) -> None:
        self.sleeping += 1
        try:
            while self.t < moment:
                tick = self._tick
                await tick.wait()
        finally:
            self.sleeping -= 1

    def advance(self, seconds: float) -> None:
        self.t += seconds
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()


async def _echo(data: dict[str, Any]) -> Any:
    return data.get("x")


def engine_with(
    store: Store, tmp_path: Path, clock: FakeClock, skills: dict[str, Any] | None = None
) -> tuple[WorkflowEngine, Any, Any]:
    engine, dispatcher, defs = make(store, tmp_path, {"echo": _echo, **(skills or {})})
    engine.clock = clock
    return engine, dispatcher, defs


NAP = {"name": "nap", "outputs": {"woke": "${{ steps.after.output }}"}, "steps": [
    {"id": "nap", "sleep": {"seconds": 3600}},
    {"id": "after", "uses": "echo", "needs": "nap", "with": {"x": "${{ steps.nap.output }}"}},
]}  # fmt: skip


async def test_a_sleep_keeps_its_wake_up_time_across_a_restart(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    engine, _, defs = engine_with(store, tmp_path, clock)
    defs.define(spec(NAP))
    execution = await engine.execute("nap")
    await until(lambda: clock.sleeping, "the timer to be set")
    await until(
        lambda: any(e.type == "step.sleeping" for _, e in engine.store.events(execution.id)),
        "the timer to be stored",
    )
    _crash(engine, execution.id)
    clock.advance(3000)  # the supervisor was down for a while
    fresh, dispatcher, _ = engine_with(store, tmp_path, clock)
    assert await fresh.recover() == [execution.id]
    await until(lambda: clock.sleeping, "the timer to be set again")
    clock.advance(599)
    await settle()
    assert fresh.get(execution.id).steps["nap"].status == StepStatus.RUNNING
    assert dispatcher.requests == []
    clock.advance(1)
    done = await fresh.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.outputs == {"woke": {"slept_until": iso(START + 3600)}}


async def test_sleep_until_a_time_from_an_expression(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    engine, _, defs = engine_with(store, tmp_path, clock)
    defs.define(spec({"name": "alarm", "inputs": {"at": {"type": "string"}}, "steps": [
        {"id": "nap", "sleep": {"until": "${{ inputs.at }}"}}]}))  # fmt: skip
    execution = await engine.execute("alarm", {"at": iso(START + 60)})
    await until(lambda: clock.sleeping, "the timer to be set")
    clock.advance(60)
    done = await engine.wait(execution.id, 10)
    assert done.steps["nap"].output == {"slept_until": iso(START + 60)}
    bad = await engine.wait((await engine.execute("alarm", {"at": "tomorrow"})).id, 10)
    assert bad.status == ExecutionStatus.FAILED and "not an ISO 8601 time" in str(bad.error)


SIGNAL = {"name": "hold", "steps": [
    {"id": "first", "uses": "items", "with": {"x": 1}},
    {"id": "hold", "wait": {"signal": "go"}, "needs": "first"},
    {"id": "after", "uses": "echo", "with": {"x": "${{ steps.hold.output.note }}"}},
]}  # fmt: skip


async def test_a_signal_becomes_the_waiting_steps_output(store: Store, tmp_path: Path) -> None:
    items = Items()
    engine, _, defs = engine_with(store, tmp_path, FakeClock(), {"items": items})
    defs.define(spec(SIGNAL))
    execution = await engine.execute("hold")
    await engine.signal(execution.id, "go", {"note": "early"})  # kept until a step waits
    await engine.signal(execution.id, "go", {"note": "second"})
    items.release(1)
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["after"].output == "early"
    kept = engine.store.load(execution.id)
    assert [s["payload"] for s in kept.signals] == [{"note": "second"}]
    with pytest.raises(Conflict):
        await engine.signal(execution.id, "go")
    with pytest.raises(InputInvalid, match="lowercase"):
        await engine.signal(execution.id, "Go Now")


async def test_a_waiting_signal_step_survives_a_restart(store: Store, tmp_path: Path) -> None:
    items = Items(free={1})
    clock = FakeClock()
    engine, _, defs = engine_with(store, tmp_path, clock, {"items": items})
    defs.define(spec(SIGNAL))
    execution = await engine.execute("hold")
    await until(
        lambda: engine.store.load(execution.id).steps["hold"].status == StepStatus.RUNNING,
        "the wait to be stored",
    )
    _crash(engine, execution.id)
    fresh, dispatcher, _ = engine_with(store, tmp_path, clock, {"items": items})
    await fresh.recover()
    await until(lambda: fresh.runs[execution.id].signal_waits, "the step to wait again")
    await fresh.signal(execution.id, "go", {"note": "after the restart"})
    done = await fresh.wait(execution.id, 10)
    assert done.steps["after"].output == "after the restart"
    assert [r.step_id for r in dispatcher.requests] == ["after"]  # first kept its output


CHOICE = {"name": "choice", "steps": [
    {"id": "decide", "wait": {"signal": ["approve", "reject"], "timeout_s": 600,
                              "on_timeout": "skip"}},
    {"id": "ship", "uses": "echo", "when": "steps.decide.output.signal == 'approve'",
     "with": {"x": "ship"}},
    {"id": "bin", "uses": "echo", "when": "steps.decide.output.signal == 'reject'",
     "with": {"x": "${{ steps.decide.output.payload }}"}},
    {"id": "late", "uses": "echo", "needs": "decide", "trigger_rule": "all_done",
     "when": "steps.decide.output == null", "with": {"x": "late"}},
]}  # fmt: skip


async def test_wcp16_deferred_choice_the_first_signal_wins(store: Store, tmp_path: Path) -> None:
    engine, _, defs = engine_with(store, tmp_path, FakeClock())
    defs.define(spec(CHOICE))
    execution = await engine.execute("choice")
    await engine.signal(execution.id, "reject", "too big")
    await engine.signal(execution.id, "approve")  # too late: kept, never taken
    done = await engine.wait(execution.id, 10)
    assert {k: s.status for k, s in done.steps.items()} == {
        "decide": StepStatus.SUCCEEDED, "ship": StepStatus.SKIPPED,
        "bin": StepStatus.SUCCEEDED, "late": StepStatus.SKIPPED,
    }  # fmt: skip
    assert done.steps["bin"].output == "too big"


async def test_a_signal_timeout_skips_or_fails_the_step(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    engine, _, defs = engine_with(store, tmp_path, clock)
    defs.define(spec(CHOICE))
    execution = await engine.execute("choice")
    await until(lambda: clock.sleeping, "the deadline to be set")
    clock.advance(600)
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["decide"].status == StepStatus.SKIPPED
    assert done.steps["late"].output == "late"

    defs.define(spec({"name": "strict", "steps": [
        {"id": "w", "wait": {"signal": "go", "timeout_s": 5}}]}))  # fmt: skip
    strict = await engine.execute("strict")
    await until(lambda: clock.sleeping, "the deadline to be set")
    clock.advance(5)
    failed = await engine.wait(strict.id, 10)
    assert failed.status == ExecutionStatus.FAILED
    assert failed.error is not None and failed.error.type == "SignalTimeout"


async def test_the_workflow_timeout_fails_it_and_cancels_its_steps(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    items = Items()
    engine, dispatcher, defs = engine_with(store, tmp_path, clock, {"items": items})
    defs.define(spec({"name": "bounded", "timeout_s": 30, "steps": [
        {"id": "a", "uses": "items", "with": {"x": 1}}]}))  # fmt: skip
    execution = await engine.execute("bounded")
    await until(lambda: items.started and clock.sleeping, "the step to run")
    clock.advance(30)
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.FAILED
    assert done.error is not None and done.error.type == "WorkflowTimeout"
    assert dispatcher.cancelled == ["a"]
