"""The engine's per-tenant quotas with the fake dispatcher and the real session Valkey:
fan-out items, sub-workflow depth, executions running, and the expression budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.errors import QuotaExceeded
from cluster.quotas import Quotas
from cluster.store import Store
from tests.unit.workflows.test_engine import Definitions, FakeDispatcher, Skill, spec
from workflows.engine import WorkflowEngine
from workflows.execution import ExecutionStatus
from workflows.expressions import EvalLimits, compile_expr, render_async
from workflows.store import BlobStore, ExecutionStore

TEN = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
#: Eight nested maps over ten items: 10^8 steps without a budget.
EIGHT_MAPS = TEN
for _name in "hgfedcba":
    EIGHT_MAPS = f"{TEN}.map({_name}, {EIGHT_MAPS if EIGHT_MAPS != TEN else _name})"


def make(
    store: Store, tmp_path: Path, skills: dict[str, Skill], quotas: Quotas
) -> tuple[WorkflowEngine, FakeDispatcher, Definitions]:
    executions = ExecutionStore(store, BlobStore(str(tmp_path / "blobs")))
    definitions = Definitions(executions)
    dispatcher = FakeDispatcher(skills)
    engine = WorkflowEngine(executions, dispatcher, definitions.load, quotas)
    return engine, dispatcher, definitions


async def _echo(data: dict[str, Any]) -> Any:
    return data


def _fan_out(items: str) -> dict[str, Any]:
    return {
        "name": "fan",
        "inputs": {"n": {"type": "integer"}},
        "steps": [
            {"id": "each", "uses": "t.echo", "for_each": {"items": items}, "with": {"x": "${{ item }}"}}
        ],
    }  # fmt: skip


async def test_a_fan_out_over_the_item_quota_fails_naming_it_and_dispatches_nothing(
    store: Store, tmp_path: Path
) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"t.echo": _echo}, Quotas(for_each_items=3))
    defs.define(spec(_fan_out("[1, 2, 3, 4]")))
    done = await engine.wait((await engine.execute("fan", {"n": 1})).id, 10)
    assert done.status == ExecutionStatus.FAILED
    assert done.error is not None and done.error.type == "QuotaExceeded"
    assert "'for_each_items' (3)" in done.error.message and "4 items" in done.error.message
    assert not dispatcher.requests

    defs.define(spec(_fan_out("[1, 2, 3]")))  # at the quota: runs
    done = await engine.wait((await engine.execute("fan", {"n": 1})).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and len(dispatcher.requests) == 3


def _calls(name: str, other: str) -> dict[str, Any]:
    return {"name": name, "steps": [{"id": "call", "uses": f"workflow:{other}"}]}


async def test_a_to_b_to_a_stops_at_the_depth_quota_naming_the_chain(
    store: Store, tmp_path: Path
) -> None:
    engine, _, defs = make(store, tmp_path, {}, Quotas(workflow_depth=3))
    defs.define(spec(_calls("a", "b")))
    defs.define(spec(_calls("b", "a")))
    done = await engine.wait((await engine.execute("a")).id, 20)
    assert done.status == ExecutionStatus.FAILED
    assert done.error is not None and "'workflow_depth' (3)" in done.error.message
    assert "a -> b -> a -> b -> a" in done.error.message
    # Every level ended; nothing is left running (or looping).
    assert not engine.runs
    started = engine.store.list_executions(50)
    assert len(started) == 4  # a, b, a, b: the fifth was refused


async def test_executions_running_quota_refuses_one_more_and_frees_on_end(
    store: Store, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def hold(data: dict[str, Any]) -> Any:
        await release.wait()
        return 1

    engine, _, defs = make(store, tmp_path, {"t.hold": hold}, Quotas(executions_running=2))
    defs.define(spec({"name": "w", "steps": [{"id": "h", "uses": "t.hold"}]}))
    first = [await engine.execute("w"), await engine.execute("w")]
    with pytest.raises(QuotaExceeded) as refused:
        await engine.execute("w")
    assert refused.value.limit == "executions_running" and refused.value.status_code == 429
    release.set()
    for execution in first:
        assert (await engine.wait(execution.id, 10)).status == ExecutionStatus.SUCCEEDED
    third = await engine.wait((await engine.execute("w")).id, 10)
    assert third.status == ExecutionStatus.SUCCEEDED


async def test_eight_nested_maps_fail_on_the_step_budget_and_the_loop_keeps_running(
    store: Store, tmp_path: Path
) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"t.echo": _echo}, Quotas())
    defs.define(spec({"name": "bomb", "steps": [{"id": "x", "uses": "t.echo",
                                                "with": {"v": "${{ " + EIGHT_MAPS + " }}"}}]}))  # fmt: skip
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        done = await engine.wait((await engine.execute("bomb")).id, 30)
    finally:
        ticker.cancel()
    assert done.status == ExecutionStatus.FAILED and done.error is not None
    assert "expression_steps" in done.error.message or "expression_timeout_s" in done.error.message
    assert not dispatcher.requests
    assert ticks > 0  # the event loop ran while the expression was being evaluated


def test_the_step_budget_names_its_limit() -> None:
    with pytest.raises(QuotaExceeded) as refused:
        compile_expr(EIGHT_MAPS).evaluate({}, EvalLimits(steps=1_000, timeout_s=60))
    assert refused.value.limit == "expression_steps" and refused.value.value == 1_000


def test_the_time_budget_stops_a_long_evaluation() -> None:
    started = time.monotonic()
    with pytest.raises(QuotaExceeded) as refused:
        compile_expr(EIGHT_MAPS).evaluate({}, EvalLimits(steps=10**12, timeout_s=0.2))
    assert refused.value.limit == "expression_timeout_s"
    assert time.monotonic() - started < 30  # bounded, not 10^8 steps (generous on purpose)


def test_a_value_doubled_at_every_level_is_refused() -> None:
    doubling = '["ab"]' + "".join(f".map(x{i}, x{i} + x{i})" for i in range(60))
    shared = "[[1]]" + "".join(f".map(y{i}, [y{i}, y{i}])" for i in range(60))
    for text in (doubling, shared):
        with pytest.raises(QuotaExceeded):
            compile_expr(text).evaluate({})


async def test_expressions_within_budget_still_evaluate() -> None:
    assert compile_expr(f"{TEN}.map(a, {TEN}.map(b, a * b))[9][9]").evaluate({}) == 81
    assert compile_expr(f"{TEN}.map(a, a * 2)").loops
    assert not compile_expr("inputs.n + 1").loops
    value = await render_async({"v": "${{ " + f"{TEN}.filter(a, a > 7)" + " }}"}, {})
    assert value == {"v": [8, 9]}
