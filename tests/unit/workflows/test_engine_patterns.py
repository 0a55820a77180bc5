"""Workflow control patterns (workflowpatterns.com) on the engine with its fake dispatcher:
merges after choices and failures (trigger rules)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cluster.errors import SpecInvalid
from cluster.store import Store
from tests.unit.workflows.test_engine import make, spec
from workflows.execution import Execution, ExecutionStatus, StepStatus
from workflows.validate import validate_workflow


async def _echo(data: dict[str, Any]) -> Any:
    return data.get("x")


async def _fail(data: dict[str, Any]) -> Any:
    raise ValueError("no")


def statuses(execution: Execution) -> dict[str, StepStatus]:
    return {k: s.status for k, s in execution.steps.items()}


def choice(rule: str | None) -> dict[str, Any]:
    merge: dict[str, Any] = {"id": "c", "uses": "echo", "needs": ["a", "b"], "with": {"x": 3}}
    if rule:
        merge["trigger_rule"] = rule
    return {
        "name": "choice", "inputs": {"go": {"type": "boolean"}},
        "steps": [
            {"id": "a", "uses": "echo", "when": "inputs.go", "with": {"x": 1}},
            {"id": "b", "uses": "echo", "when": "!inputs.go", "with": {"x": 2}},
            merge,
        ],
    }  # fmt: skip


@pytest.mark.parametrize("go", [True, False])
async def test_wcp5_simple_merge_after_an_exclusive_choice_runs_the_merge(
    store: Store, tmp_path: Path, go: bool
) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"echo": _echo})
    defs.define(spec(choice("none_failed")))
    done = await engine.wait((await engine.execute("choice", {"go": go})).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    ran, skipped = ("a", "b") if go else ("b", "a")
    assert statuses(done) == {
        ran: StepStatus.SUCCEEDED,
        skipped: StepStatus.SKIPPED,
        "c": StepStatus.SUCCEEDED,
    }
    assert sorted(r.step_id for r in dispatcher.requests) == sorted([ran, "c"])


async def test_the_default_rule_skips_after_a_skipped_step_and_says_why(
    store: Store, tmp_path: Path
) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"echo": _echo})
    defs.define(spec(choice(None)))
    done = await engine.wait((await engine.execute("choice", {"go": True})).id, 10)
    assert statuses(done)["c"] == StepStatus.SKIPPED
    assert "c" not in {r.step_id for r in dispatcher.requests}
    reason = [e.data for _, e in engine.store.events(done.id) if e.step == "c"][-1]["reason"]
    assert reason == "trigger_rule all_succeeded not met: 'b' skipped"


async def test_wcp8_multi_merge_and_wcp7_synchronizing_merge_of_parallel_branches(
    store: Store, tmp_path: Path
) -> None:
    """b and c both run (when true), d waits for both and runs once; e after a skipped
    branch still runs under none_failed."""
    engine, dispatcher, defs = make(store, tmp_path, {"echo": _echo})
    defs.define(spec({
        "name": "sync", "steps": [
            {"id": "a", "uses": "echo", "with": {"x": 1}},
            {"id": "b", "uses": "echo", "needs": "a", "when": "true", "with": {"x": 2}},
            {"id": "c", "uses": "echo", "needs": "a", "when": "false", "with": {"x": 3}},
            {"id": "d", "uses": "echo", "needs": ["b", "c"], "trigger_rule": "none_failed",
             "with": {"x": "${{ steps.b.output }}"}},
        ],
    }))  # fmt: skip
    done = await engine.wait((await engine.execute("sync")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["d"].output == 2
    assert [r.step_id for r in dispatcher.requests].count("d") == 1


async def test_wcp9_one_succeeded_fires_at_the_first_branch_without_waiting_for_the_rest(
    store: Store, tmp_path: Path
) -> None:
    merged = asyncio.Event()

    async def slow(data: dict[str, Any]) -> Any:
        await merged.wait()  # ends only after the merge has run
        return "slow"

    async def merge(data: dict[str, Any]) -> Any:
        merged.set()
        return data["x"]

    engine, dispatcher, defs = make(store, tmp_path, {"echo": _echo, "slow": slow, "m": merge})
    defs.define(spec({
        "name": "first", "steps": [
            {"id": "fast", "uses": "echo", "with": {"x": "fast"}},
            {"id": "late", "uses": "slow"},
            {"id": "m", "uses": "m", "needs": ["fast", "late"], "trigger_rule": "one_succeeded",
             "with": {"x": "${{ steps.fast.output }}"}},
        ],
    }))  # fmt: skip
    done = await engine.wait((await engine.execute("first")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["m"].output == "fast" and done.steps["late"].output == "slow"
    assert [r.step_id for r in dispatcher.requests].count("m") == 1


async def test_after_a_continued_failure_rules_tell_it_apart(store: Store, tmp_path: Path) -> None:
    engine, dispatcher, defs = make(store, tmp_path, {"echo": _echo, "fail": _fail})
    defs.define(spec({
        "name": "after", "steps": [
            {"id": "a", "uses": "fail", "on_error": "continue"},
            {"id": "default", "uses": "echo", "needs": "a"},
            {"id": "clean", "uses": "echo", "needs": "a", "trigger_rule": "none_failed"},
            {"id": "always", "uses": "echo", "needs": ["a", "clean"], "trigger_rule": "all_done"},
            {"id": "any", "uses": "echo", "needs": ["a"], "trigger_rule": "one_succeeded"},
            {"id": "one", "uses": "echo", "needs": ["a"], "trigger_rule": "one_done"},
        ],
    }))  # fmt: skip
    done = await engine.wait((await engine.execute("after")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert statuses(done) == {
        "a": StepStatus.FAILED, "default": StepStatus.SUCCEEDED, "clean": StepStatus.SKIPPED,
        "always": StepStatus.SUCCEEDED, "any": StepStatus.SKIPPED, "one": StepStatus.SUCCEEDED,
    }  # fmt: skip
    assert {r.step_id for r in dispatcher.requests} == {"a", "default", "always", "one"}


def test_validation_names_a_step_whose_rule_can_never_be_met() -> None:
    with pytest.raises(SpecInvalid) as caught:
        validate_workflow(spec({"name": "never", "steps": [
            {"id": "a", "uses": "echo", "trigger_rule": "one_succeeded"}]}))  # fmt: skip
    assert "step 'a': can never run: trigger_rule one_succeeded" in str(caught.value.problems)


def test_an_unknown_rule_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="all_succeeded"):
        spec({"name": "bad", "steps": [{"id": "a", "uses": "echo", "trigger_rule": "all_success"}]})


LOOP: dict[str, Any] = {"name": "loop", "outputs": {"n": "${{ steps.count.output }}"}, "steps": [
    {"id": "count", "uses": "inc", "with": {"n": "${{ output == null ? 0 : output }}",
                                            "i": "${{ iteration }}"},
     "repeat": {"until": "output >= 3", "max_iterations": 5}},
]}  # fmt: skip


async def test_wcp21_a_structured_loop_repeats_until_its_condition(
    store: Store, tmp_path: Path
) -> None:
    async def inc(data: dict[str, Any]) -> Any:
        return data["n"] + 1

    engine, dispatcher, defs = make(store, tmp_path, {"inc": inc})
    validate_workflow(spec(LOOP))
    defs.define(spec(LOOP))
    done = await engine.wait((await engine.execute("loop")).id, 10)
    assert done.status == ExecutionStatus.SUCCEEDED and done.outputs == {"n": 3}
    assert [(r.step_id, r.input["i"]) for r in dispatcher.requests] == [
        ("count[0]", 0),
        ("count[1]", 1),
        ("count[2]", 2),
    ]
    assert done.steps["count"].items == ["count[0]", "count[1]", "count[2]"]


async def test_a_loop_that_never_meets_its_condition_fails_at_its_bound(
    store: Store, tmp_path: Path
) -> None:
    async def same(data: dict[str, Any]) -> Any:
        return 0

    engine, dispatcher, defs = make(store, tmp_path, {"inc": same})
    defs.define(spec(LOOP))
    done = await engine.wait((await engine.execute("loop")).id, 10)
    assert done.status == ExecutionStatus.FAILED
    assert done.error is not None and done.error.type == "RepeatExhausted"
    assert len(dispatcher.requests) == 5


async def test_a_loop_goes_on_after_a_restart_from_its_unfinished_iteration(
    store: Store, tmp_path: Path
) -> None:
    from tests.unit.workflows.test_engine import _crash
    from tests.unit.workflows.test_engine_cancel import until

    hold = asyncio.Event()

    async def inc(data: dict[str, Any]) -> Any:
        if data["i"] == 2:
            await hold.wait()
        return data["n"] + 1

    engine, _, defs = make(store, tmp_path, {"inc": inc})
    defs.define(spec(LOOP))
    execution = await engine.execute("loop")
    await until(
        lambda: engine.store.load(execution.id).steps.get("count[2]") is not None,
        "the third iteration to be stored",
    )
    _crash(engine, execution.id)
    hold.set()
    fresh, dispatcher, _ = make(store, tmp_path, {"inc": inc})
    await fresh.recover()
    done = await fresh.wait(execution.id, 10)
    assert done.outputs == {"n": 3}
    assert [r.step_id for r in dispatcher.requests] == ["count[2]"]


def test_a_loop_condition_sees_output_and_iteration_only() -> None:
    bad = {**LOOP, "steps": [{**LOOP["steps"][0], "repeat": {"until": "result > 1",
                                                            "max_iterations": 2}}]}  # fmt: skip
    with pytest.raises(SpecInvalid, match="unknown name 'result'"):
        validate_workflow(spec(bad))
    with pytest.raises(ValueError, match="both fan out and repeat"):
        spec({"name": "x", "steps": [{"id": "a", "uses": "inc", "for_each": {"items": "[1]"},
                                      "repeat": {"until": "true", "max_iterations": 2}}]})  # fmt: skip
