"""Workflow budgets in the engine: the step that ran out fails, or waits at an approval gate
and goes on under the same attempt once approved (also across a supervisor restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cluster.errors import ErrorInfo
from cluster.store import Store
from tests.unit.workflows.test_engine import _crash, make, spec
from workflows.engine import StepOutcome, StepRequest
from workflows.execution import ExecutionStatus, StepStatus
from workflows.spec import WorkflowSpec


class BudgetDispatcher:
    """An agent that runs out of the workflow's budget unless a person waived it."""

    def __init__(self, error_type: str = "BudgetNeedsApproval") -> None:
        self.requests: list[StepRequest] = []
        self.error_type = error_type

    async def run(self, request: StepRequest) -> StepOutcome:
        self.requests.append(request)
        if request.budget is not None and not request.budget_waived:
            error = ErrorInfo(type=self.error_type, message="execution e reached its budget")
            return StepOutcome(ok=False, error=error)
        return StepOutcome(ok=True, output=f"done at attempt {request.attempt}")


def budgeted(on_exceed: str) -> WorkflowSpec:
    return spec({
        "name": "spend",
        "budget": {"max_cost_usd": 0.5, "on_exceed": on_exceed},
        "outputs": {"r": "${{ steps.write.output }}"},
        "steps": [{"id": "write", "uses": "text.write"}],
    })  # fmt: skip


def engine_with(
    store: Store, tmp_path: Path, dispatcher: BudgetDispatcher, flow: WorkflowSpec
) -> Any:
    engine, _, defs = make(store, tmp_path, {})
    engine.dispatcher = dispatcher
    defs.define(flow)
    return engine


async def waiting(engine: Any, execution_id: str, step: str = "write") -> None:
    for _ in range(500):  # 10 s: the machine may be busy
        run = engine.runs.get(execution_id)
        if run is not None and step in run.gates:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not at the gate: {engine.get(execution_id).status}")


async def test_a_budget_with_approval_holds_the_step_and_approving_goes_on(
    store: Store, tmp_path: Path
) -> None:
    dispatcher = BudgetDispatcher()
    engine = engine_with(store, tmp_path, dispatcher, budgeted("approval"))
    execution = await engine.execute("spend")
    await waiting(engine, execution.id)
    assert engine.get(execution.id).steps["write"].status == StepStatus.WAITING_APPROVAL
    assert dispatcher.requests[0].budget.max_cost_usd == 0.5
    await engine.decide(execution.id, "write", True, by="ann")
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.outputs == {"r": "done at attempt 1"}  # the same attempt went on
    assert [r.budget_waived for r in dispatcher.requests] == [False, True]
    assert done.steps["write"].attempts == 1 and done.steps["write"].budget_waived


async def test_rejecting_the_budget_gate_fails_the_step(store: Store, tmp_path: Path) -> None:
    engine = engine_with(store, tmp_path, BudgetDispatcher(), budgeted("approval"))
    execution = await engine.execute("spend")
    await waiting(engine, execution.id)
    await engine.decide(execution.id, "write", False, by="ann", reason="too dear")
    done = await engine.wait(execution.id, 10)
    assert done.status == ExecutionStatus.FAILED
    assert done.steps["write"].error.type == "Rejected"


async def test_a_budget_that_fails_fails_the_step(store: Store, tmp_path: Path) -> None:
    dispatcher = BudgetDispatcher("BudgetExceeded")
    engine = engine_with(store, tmp_path, dispatcher, budgeted("fail"))
    done = await engine.wait((await engine.execute("spend")).id, 10)
    assert done.status == ExecutionStatus.FAILED
    assert done.steps["write"].error.type == "BudgetExceeded"
    assert len(dispatcher.requests) == 1


async def test_a_step_at_its_budget_gate_resumes_there_after_a_restart(
    store: Store, tmp_path: Path
) -> None:
    engine = engine_with(store, tmp_path, BudgetDispatcher(), budgeted("approval"))
    execution = await engine.execute("spend")
    await waiting(engine, execution.id)
    await asyncio.sleep(0.05)  # the gate's state is written
    _crash(engine, execution.id)
    dispatcher = BudgetDispatcher()
    fresh = engine_with(store, tmp_path, dispatcher, budgeted("approval"))
    await fresh.recover()
    await waiting(fresh, execution.id)
    await fresh.decide(execution.id, "write", True, by="ann")
    done = await fresh.wait(execution.id, 10)
    assert done.outputs == {"r": "done at attempt 1"}  # still the first attempt


async def test_a_step_cut_short_goes_on_under_its_own_attempt(store: Store, tmp_path: Path) -> None:
    release = asyncio.Event()

    class Slow(BudgetDispatcher):
        async def run(self, request: StepRequest) -> StepOutcome:
            self.requests.append(request)
            await release.wait()
            return StepOutcome(ok=True, output=request.attempt)

    flow = spec({"name": "slow", "outputs": {"r": "${{ steps.a.output }}"},
                 "steps": [{"id": "a", "uses": "text.write"}]})  # fmt: skip
    engine = engine_with(store, tmp_path, Slow(), flow)
    execution = await engine.execute("slow")
    await asyncio.sleep(0.1)
    _crash(engine, execution.id)
    release.set()
    fresh = engine_with(store, tmp_path, Slow(), flow)
    await fresh.recover()
    assert (await fresh.wait(execution.id, 10)).outputs == {"r": 1}


def test_a_budget_needs_a_limit() -> None:
    with pytest.raises(ValidationError, match="max_tokens, max_cost_usd or both"):
        spec({"name": "x", "budget": {"on_exceed": "fail"}, "steps": [{"id": "a", "uses": "a.b"}]})
    with pytest.raises(ValidationError, match="on_exceed"):
        spec({"name": "x", "budget": {"max_tokens": 5, "on_exceed": "pause"},
              "steps": [{"id": "a", "uses": "a.b"}]})  # fmt: skip


async def test_each_fan_out_item_past_the_budget_has_its_own_gate(
    store: Store, tmp_path: Path
) -> None:
    flow = spec({
        "name": "fan", "budget": {"max_tokens": 10, "on_exceed": "approval"},
        "outputs": {"r": "${{ steps.write.output }}"},
        "steps": [{"id": "write", "uses": "text.write", "for_each": {"items": "[1, 2]"}}],
    })  # fmt: skip
    engine = engine_with(store, tmp_path, BudgetDispatcher(), flow)
    execution = await engine.execute("fan")
    for item in ("write[0]", "write[1]"):
        await waiting(engine, execution.id, item)
        await engine.decide(execution.id, item, True, by="ann")
    done = await engine.wait(execution.id, 10)
    assert done.outputs == {"r": ["done at attempt 1", "done at attempt 1"]}
