"""The engine with a fake dispatcher and the real session Valkey: no Ray."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cluster.errors import Conflict, ErrorInfo, InputInvalid
from cluster.store import Store
from workflows.engine import StepOutcome, StepRequest, WorkflowEngine
from workflows.execution import ExecutionStatus, StepStatus
from workflows.spec import WorkflowSpec
from workflows.store import BlobStore, ExecutionStore

Skill = Callable[[dict[str, Any]], Awaitable[Any]]


class FakeDispatcher:
    """Runs steps with in-process coroutines and counts every dispatch by idempotency key."""

    def __init__(self, skills: dict[str, Skill]) -> None:
        self.skills = skills
        self.calls: Counter[str] = Counter()
        self.requests: list[StepRequest] = []
        #: Step keys (`step` or `step[i]`) whose attempt the engine cancelled, in order.
        self.cancelled: list[str] = []

    async def run(self, request: StepRequest) -> StepOutcome:
        self.calls[request.idempotency_key] += 1
        self.requests.append(request)
        try:
            return StepOutcome(ok=True, output=await self.skills[request.target](request.input))
        except Exception as exc:
            retryable = isinstance(exc, ConnectionError)
            return StepOutcome(
                ok=False,
                error=ErrorInfo(type=type(exc).__name__, message=str(exc), retryable=retryable),
            )

    async def cancel(self, request: StepRequest) -> None:
        self.cancelled.append(request.step_id)


class Definitions:
    def __init__(self, store: ExecutionStore) -> None:
        self.store = store

    def define(self, spec: WorkflowSpec) -> int:
        return self.store.define(spec.name, spec.model_dump_json(by_alias=True))[0]

    def load(self, name: str, version: int | None) -> tuple[int, WorkflowSpec]:
        version, raw = self.store.definition(name, version)
        return version, WorkflowSpec.model_validate_json(raw)


async def _double(data: dict[str, Any]) -> Any:
    return data["x"] * 2


async def _add(data: dict[str, Any]) -> Any:
    return data["a"] + data["b"]


def make(
    store: Store, tmp_path: Path, skills: dict[str, Skill]
) -> tuple[WorkflowEngine, FakeDispatcher, Definitions]:
    executions = ExecutionStore(store, BlobStore(str(tmp_path / "blobs")))
    definitions = Definitions(executions)
    dispatcher = FakeDispatcher(skills)
    return WorkflowEngine(executions, dispatcher, definitions.load), dispatcher, definitions


def spec(data: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec.model_validate(data)


DIAMOND = {
    "name": "diamond",
    "inputs": {"x": {"type": "integer"}},
    "outputs": {"total": "${{ steps.sum.output }}"},
    "steps": [
        {"id": "left", "uses": "math.double", "with": {"x": "${{ inputs.x }}"}},
        {"id": "right", "uses": "math.double", "with": {"x": "${{ inputs.x + 1 }}"}},
        {
            "id": "sum",
            "uses": "math.add",
            "with": {"a": "${{ steps.left.output }}", "b": "${{ steps.right.output }}"},
        },
    ],
}


async def test_a_diamond_runs_in_dependency_order(store: Store, tmp_path: Path) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"math.double": _double, "math.add": _add})
    defs.define(spec(DIAMOND))
    execution = await engine.execute("diamond", {"x": 3})
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.outputs == {"total": 6 + 8}
    assert [r.step_id for r in dispatcher.requests][-1] == "sum"
    stored = engine.store.load(execution.id)
    assert stored.status == ExecutionStatus.SUCCEEDED and stored.steps["sum"].output == 14
    kinds = [e.type for _, e in engine.store.events(execution.id)]
    assert kinds[0] == "execution.started" and kinds[-1] == "execution.succeeded"
    assert kinds.count("step.succeeded") == 3


async def test_inputs_are_checked_at_execution(store: Store, tmp_path: Path) -> None:
    engine, _, defs = make(store, tmp_path, {})
    defs.define(spec(DIAMOND))
    with pytest.raises(InputInvalid, match="'x'"):
        await engine.execute("diamond", {"x": "three"})


async def test_when_false_skips_the_step_and_its_dependents(store: Store, tmp_path: Path) -> None:
    engine, _dispatcher, defs = make(store, tmp_path, {"math.double": _double})
    defs.define(spec({
        "name": "cond", "inputs": {"go": {"type": "boolean"}},
        "steps": [
            {"id": "a", "uses": "math.double", "when": "inputs.go", "with": {"x": 1}},
            {"id": "b", "uses": "math.double", "with": {"x": "${{ steps.a.output }}"}},
            {"id": "c", "uses": "math.double", "with": {"x": 5}},
        ],
    }))  # fmt: skip
    done = await engine.wait((await engine.execute("cond", {"go": False})).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert {k: s.status for k, s in done.steps.items()} == {
        "a": StepStatus.SKIPPED, "b": StepStatus.SKIPPED, "c": StepStatus.SUCCEEDED,
    }  # fmt: skip


async def test_for_each_fans_out_with_a_parallel_limit_and_keeps_item_order(
    store: Store, tmp_path: Path
) -> None:
    running = 0
    peak = 0

    async def slow_double(data: dict[str, Any]) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return data["x"] * 2

    engine, _, defs = make(store, tmp_path, {"math.double": slow_double})
    defs.define(spec({
        "name": "fan", "inputs": {"xs": {"type": "array"}},
        "outputs": {"all": "${{ steps.each.output }}"},
        "steps": [{"id": "each", "uses": "math.double", "with": {"x": "${{ item }}"},
                   "for_each": {"items": "inputs.xs", "max_parallel": 3}}],
    }))  # fmt: skip
    done = await engine.wait((await engine.execute("fan", {"xs": list(range(20))})).id, 10)
    assert done.outputs == {"all": [2 * i for i in range(20)]}
    assert peak == 3


async def test_join_any_succeeds_when_one_item_does(store: Store, tmp_path: Path) -> None:
    async def odd_only(data: dict[str, Any]) -> Any:
        if data["x"] % 2 == 0:
            raise ValueError(f"{data['x']} is even")
        return data["x"]

    engine, _, defs = make(store, tmp_path, {"pick": odd_only})
    defs.define(spec({
        "name": "anyone", "outputs": {"r": "${{ steps.each.output }}"},
        "steps": [{"id": "each", "uses": "pick", "with": {"x": "${{ item }}"},
                   "for_each": {"items": "[2, 3, 4]", "join": "any"}}],
    }))  # fmt: skip
    done = await engine.wait((await engine.execute("anyone")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.outputs == {"r": [None, 3, None]}


async def test_retries_with_backoff_then_succeeds(store: Store, tmp_path: Path) -> None:
    tries = 0

    async def flaky(data: dict[str, Any]) -> Any:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise ConnectionError("try again")
        return "ok"

    engine, _, defs = make(store, tmp_path, {"flaky": flaky})
    defs.define(spec({"name": "retry", "steps": [
        {"id": "a", "uses": "flaky", "retry": {"attempts": 3, "backoff_s": 0.01}}]}))  # fmt: skip
    done = await engine.wait((await engine.execute("retry")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.steps["a"].attempts == 3
    kinds = [e.type for _, e in engine.store.events(done.id)]
    assert kinds.count("step.retried") == 2


async def test_timeout_fails_the_step(store: Store, tmp_path: Path) -> None:
    async def hang(data: dict[str, Any]) -> Any:
        await asyncio.sleep(30)

    engine, _, defs = make(store, tmp_path, {"hang": hang})
    defs.define(spec({"name": "slow", "steps": [{"id": "a", "uses": "hang", "timeout_s": 0.1}]}))
    done = await engine.wait((await engine.execute("slow")).id, 10)
    assert done.status == ExecutionStatus.FAILED
    assert done.steps["a"].error is not None and done.steps["a"].error.type == "TaskTimeout"


async def test_on_error_continue_and_fallback(store: Store, tmp_path: Path) -> None:
    async def boom(data: dict[str, Any]) -> Any:
        raise ValueError("boom")

    engine, _, defs = make(store, tmp_path, {"boom": boom, "math.double": _double})
    defs.define(spec({
        "name": "errors", "outputs": {"via": "${{ steps.b.output }}"},
        "steps": [
            {"id": "a", "uses": "boom", "on_error": "continue"},
            {"id": "b", "uses": "boom", "on_error": {"fallback": "plan_b"}},
            {"id": "plan_b", "uses": "math.double", "with": {"x": 21}},
            {"id": "c", "uses": "math.double", "needs": ["a"], "with": {"x": 1}},
        ],
    }))  # fmt: skip
    done = await engine.wait((await engine.execute("errors")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.outputs == {"via": 42}
    assert (
        done.steps["a"].status == StepStatus.FAILED
        and done.steps["c"].status == StepStatus.SUCCEEDED
    )


async def test_a_failed_step_fails_the_execution_and_retry_reruns_only_it(
    store: Store, tmp_path: Path
) -> None:
    broken = True

    async def maybe(data: dict[str, Any]) -> Any:
        if broken:
            raise ValueError("not yet")
        return "fixed"

    engine, dispatcher, defs = make(store, tmp_path, {"math.double": _double, "maybe": maybe})
    defs.define(spec({"name": "fix", "steps": [
        {"id": "a", "uses": "math.double", "with": {"x": 1}},
        {"id": "b", "uses": "maybe", "needs": ["a"]}]}))  # fmt: skip
    first = await engine.wait((await engine.execute("fix")).id, 10)
    assert first.status == ExecutionStatus.FAILED and "not yet" in (
        first.error.message if first.error else ""
    )
    with pytest.raises(Conflict):
        await engine.resume(first.id)
    broken = False
    await engine.retry(first.id)
    again = await engine.wait(first.id, 10)
    assert again.status == ExecutionStatus.SUCCEEDED
    assert dispatcher.calls[f"{first.id}/a"] == 1 and dispatcher.calls[f"{first.id}/b"] == 2


async def test_approval_gate_approve_reject_and_timeout(store: Store, tmp_path: Path) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"math.double": _double})
    defs.define(spec({"name": "gate", "outputs": {"r": "${{ steps.a.output }}"}, "steps": [
        {"id": "a", "uses": "math.double", "with": {"x": 2}, "approval": {"prompt": "ok?"}}]}))  # fmt: skip
    execution = await engine.execute("gate")
    await asyncio.sleep(0.05)
    assert engine.get(execution.id).status == ExecutionStatus.WAITING_APPROVAL
    assert not dispatcher.requests  # nothing runs before the decision
    await engine.decide(execution.id, "a", True, by="alice", reason="looks fine")
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.outputs == {"r": 4}
    assert done.steps["a"].approval is not None and done.steps["a"].approval.by == "alice"

    rejected = await engine.execute("gate")
    await asyncio.sleep(0.05)
    await engine.decide(rejected.id, "a", False, by="bob", reason="no")
    assert (await engine.wait(rejected.id, 10)).status == ExecutionStatus.FAILED
    with pytest.raises(Conflict, match=r"not waiting for approval|not running"):
        await engine.decide(rejected.id, "a", True, by="bob")

    defs.define(spec({"name": "gate", "steps": [
        {"id": "a", "uses": "math.double", "with": {"x": 2},
         "approval": {"timeout_s": 0.05, "on_timeout": "approve"}}]}))  # fmt: skip
    timed = await engine.wait((await engine.execute("gate")).id, 10)
    assert timed.status == ExecutionStatus.SUCCEEDED and timed.steps["a"].approval.by == "timeout"  # type: ignore[union-attr]


async def test_pause_lets_running_steps_finish_and_starts_nothing_new(
    store: Store, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def wait_release(data: dict[str, Any]) -> Any:
        await release.wait()
        return 1

    engine, _dispatcher, defs = make(
        store, tmp_path, {"wait": wait_release, "math.double": _double}
    )
    defs.define(spec({"name": "pausable", "steps": [
        {"id": "a", "uses": "wait"},
        {"id": "b", "uses": "math.double", "with": {"x": "${{ steps.a.output }}"}}]}))  # fmt: skip
    execution = await engine.execute("pausable")
    await asyncio.sleep(0.05)
    await engine.pause(execution.id)
    release.set()
    await asyncio.sleep(0.1)
    state = engine.get(execution.id)
    assert (
        state.status == ExecutionStatus.PAUSED and state.steps["a"].status == StepStatus.SUCCEEDED
    )
    assert state.steps["b"].status == StepStatus.PENDING
    with pytest.raises(Conflict):
        await engine.pause(execution.id)
    await engine.resume(execution.id)
    assert (await engine.wait(execution.id, 10)).status == ExecutionStatus.SUCCEEDED


async def test_cancel_cancels_running_steps(store: Store, tmp_path: Path) -> None:
    cancelled = asyncio.Event()

    async def forever(data: dict[str, Any]) -> Any:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    engine, _, defs = make(store, tmp_path, {"forever": forever})
    defs.define(spec({"name": "long", "steps": [{"id": "a", "uses": "forever"}]}))
    execution = await engine.execute("long")
    await asyncio.sleep(0.05)
    await engine.cancel(execution.id, by="op")
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.CANCELLED and cancelled.is_set()
    assert engine.store.load(execution.id).steps["a"].status == StepStatus.CANCELLED


async def test_recovery_resumes_without_rerunning_finished_steps(
    store: Store, tmp_path: Path
) -> None:
    gate = asyncio.Event()

    async def blocked(data: dict[str, Any]) -> Any:
        await gate.wait()
        return "late"

    engine, dispatcher, defs = make(store, tmp_path, {"math.double": _double, "blocked": blocked})
    defs.define(spec({"name": "crash", "outputs": {"r": "${{ steps.b.output }}"}, "steps": [
        {"id": "a", "uses": "math.double", "with": {"x": 1}},
        {"id": "b", "uses": "blocked", "needs": ["a"]}]}))  # fmt: skip
    execution = await engine.execute("crash")
    await asyncio.sleep(0.1)
    # The "supervisor" dies: its tasks vanish without recording anything more.
    run = engine.runs.pop(execution.id)
    for task in [*run.tasks.values(), run.loop_task]:
        assert task is not None
        task.cancel()
    gate.set()
    fresh, dispatcher2, _ = make(store, tmp_path, {"math.double": _double, "blocked": blocked})
    assert await fresh.recover() == [execution.id]
    done = await fresh.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.outputs == {"r": "late"}
    assert dispatcher2.calls == Counter({f"{execution.id}/b": 1})  # a is not run again
    assert dispatcher.calls[f"{execution.id}/b"] == 1  # same idempotency key both times


async def test_arrow_outputs_are_persisted_as_parquet(store: Store, tmp_path: Path) -> None:
    async def table(data: dict[str, Any]) -> Any:
        return {"t": pa.table({"n": [1, 2, 3]})}

    engine, _, defs = make(store, tmp_path, {"make.table": table})
    defs.define(spec({"name": "arrow", "steps": [{"id": "a", "uses": "make.table"}]}))
    done = await engine.wait((await engine.execute("arrow")).id, 10)
    stored = engine.store.load(done.id).steps["a"].output["t"]
    assert isinstance(stored, pa.Table) and stored.column("n").to_pylist() == [1, 2, 3]


async def test_sub_workflow_and_version_pinning(store: Store, tmp_path: Path) -> None:
    engine, _, defs = make(store, tmp_path, {"math.double": _double})
    defs.define(spec({"name": "child", "inputs": {"x": {"type": "integer"}},
                      "outputs": {"y": "${{ steps.d.output }}"},
                      "steps": [{"id": "d", "uses": "math.double", "with": {"x": "${{ inputs.x }}"}}]}))  # fmt: skip
    v1 = defs.define(spec({"name": "parent", "outputs": {"y": "${{ steps.sub.output.y }}"},
                           "steps": [{"id": "sub", "uses": "workflow:child", "with": {"x": 5}}]}))  # fmt: skip
    done = await engine.wait((await engine.execute("parent")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.outputs == {"y": 10}
    v2 = defs.define(spec({"name": "parent", "outputs": {"y": "${{ 0 }}"},
                           "steps": [{"id": "sub", "uses": "math.double", "with": {"x": 0}}]}))  # fmt: skip
    assert (v1, v2) == (1, 2)
    assert defs.define(spec({"name": "parent", "outputs": {"y": "${{ 0 }}"},
                             "steps": [{"id": "sub", "uses": "math.double", "with": {"x": 0}}]})) == 2  # fmt: skip
    pinned = await engine.wait((await engine.execute("parent", version=1)).id, 10)
    assert pinned.version == 1 and pinned.outputs == {"y": 10}


def _crash(engine: WorkflowEngine, execution_id: str) -> None:
    """The supervisor dies: its tasks vanish and nothing more is written."""
    run = engine.runs.pop(execution_id)
    for task in [*run.tasks.values(), run.loop_task]:
        if task is not None:
            task.cancel()


async def test_recovery_from_a_gate_keeps_the_gate_and_its_deadline(
    store: Store, tmp_path: Path
) -> None:
    engine, _, defs = make(store, tmp_path, {"math.double": _double})
    defs.define(spec({"name": "gate", "outputs": {"r": "${{ steps.a.output }}"}, "steps": [
        {"id": "a", "uses": "math.double", "with": {"x": 4}, "approval": {"prompt": "ok?"}}]}))  # fmt: skip
    execution = await engine.execute("gate")
    await asyncio.sleep(0.1)
    _crash(engine, execution.id)
    fresh, dispatcher, _ = make(store, tmp_path, {"math.double": _double})
    await fresh.recover()
    await asyncio.sleep(0.1)
    assert fresh.get(execution.id).status == ExecutionStatus.WAITING_APPROVAL
    assert not dispatcher.requests
    await fresh.decide(execution.id, "a", True, by="ann")
    done = await fresh.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.outputs == {"r": 8}


async def test_recovery_of_a_paused_execution_stays_paused_until_resumed(
    store: Store, tmp_path: Path
) -> None:
    engine, _, defs = make(store, tmp_path, {"math.double": _double})
    defs.define(spec({"name": "two", "steps": [
        {"id": "a", "uses": "math.double", "with": {"x": 1}},
        {"id": "b", "uses": "math.double", "with": {"x": "${{ steps.a.output }}"}}]}))  # fmt: skip
    execution = await engine.execute("two")
    await engine.pause(execution.id)
    await asyncio.sleep(0.1)
    _crash(engine, execution.id)
    fresh, _dispatcher, _ = make(store, tmp_path, {"math.double": _double})
    await fresh.recover()
    await asyncio.sleep(0.1)
    state = fresh.get(execution.id)
    assert state.status == ExecutionStatus.PAUSED and state.steps["b"].status == StepStatus.PENDING
    await fresh.resume(execution.id)
    assert (await fresh.wait(execution.id, 10)).status == ExecutionStatus.SUCCEEDED


async def test_recovery_mid_fan_out_runs_only_the_unfinished_items(
    store: Store, tmp_path: Path
) -> None:
    slow_from = 5
    release = asyncio.Event()

    async def item(data: dict[str, Any]) -> Any:
        if data["x"] >= slow_from:
            await release.wait()
        return data["x"] * 10

    engine, _first, defs = make(store, tmp_path, {"item": item})
    defs.define(spec({"name": "fan", "outputs": {"all": "${{ steps.each.output }}"}, "steps": [
        {"id": "each", "uses": "item", "with": {"x": "${{ item }}"},
         "for_each": {"items": "[0, 1, 2, 3, 4, 5, 6, 7]", "max_parallel": 8}}]}))  # fmt: skip
    execution = await engine.execute("fan")
    await asyncio.sleep(0.2)  # items 0-4 are done, 5-7 wait
    _crash(engine, execution.id)
    release.set()
    fresh, second, _ = make(store, tmp_path, {"item": item})
    await fresh.recover()
    done = await fresh.wait(execution.id, 10)
    assert done.outputs == {"all": [x * 10 for x in range(8)]}
    assert sorted(r.step_id for r in second.requests) == ["each[5]", "each[6]", "each[7]"]


async def test_recovery_of_a_finished_execution_does_nothing(store: Store, tmp_path: Path) -> None:
    engine, _, defs = make(store, tmp_path, {"math.double": _double})
    defs.define(
        spec({"name": "one", "steps": [{"id": "a", "uses": "math.double", "with": {"x": 1}}]})
    )
    done = await engine.wait((await engine.execute("one")).id, 10)
    fresh, dispatcher, _ = make(store, tmp_path, {"math.double": _double})
    assert await fresh.recover() == [] and not dispatcher.requests
    assert fresh.get(done.id).status == ExecutionStatus.SUCCEEDED
