"""A skill's `SkillContext` parameter: not input, given the task's ids and cancel flag."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from actors.kinds import build_skills
from actors.models import AgentSpec, Task, TaskContext
from actors.skills import Skill, SkillContext
from cluster.errors import InputInvalid


def skills(entrypoint: str, capability: str) -> Skill:
    spec = AgentSpec(name="ctx", capabilities=[capability], entrypoint=entrypoint)
    return build_skills(spec)[capability]


def step_task(**fields: Any) -> Task:
    context = TaskContext(
        tenant="acme", workflow_id="flow", execution_id="ex1", step_id="charge", attempt=2,
        step_attempt=1,
    )  # fmt: skip
    return Task(capability="test.ids", input={"note": "hi"}, context=context, **fields)


def test_the_context_parameter_is_not_in_the_input_schema() -> None:
    schema = skills("tests.fixtures.context_skills:ids", "test.ids").info.input_schema
    assert set(schema["properties"]) == {"note"}
    assert schema["required"] == ["note"]
    empty = skills("tests.fixtures.context_skills:ids_async", "test.ids-async").info
    assert empty.input_schema.get("properties", {}) == {}


def test_a_sync_skill_receives_the_tasks_ids() -> None:
    task = step_task(idempotency_key="ex1/charge")
    seen = asyncio.run(skills("tests.fixtures.context_skills:ids", "test.ids").run(task))
    assert seen == {
        "note": "hi", "task_id": task.id, "idempotency_key": "ex1/charge", "attempt": 2,
        "tenant": "acme", "workflow_id": "flow", "execution_id": "ex1", "step_id": "charge",
        "step_attempt": 1, "cancelled": False,
    }  # fmt: skip


def test_an_async_skill_without_a_key_gets_the_task_id_as_key() -> None:
    task = step_task().model_copy(update={"capability": "test.ids-async", "input": {}})
    skill = skills("tests.fixtures.context_skills:ids_async", "test.ids-async")
    seen = asyncio.run(skill.run(task))
    assert seen["idempotency_key"] == task.id == seen["task_id"]
    assert seen["execution_id"] == "ex1"


@pytest.mark.parametrize("name", ["ctx", "context"])
def test_a_caller_cannot_send_the_context(name: str) -> None:
    skill = skills("tests.fixtures.context_skills:ids", "test.ids")
    task = step_task().model_copy(update={"input": {"note": "hi", name: {"step_id": "forged"}}})
    with pytest.raises(InputInvalid) as err:
        asyncio.run(skill.run(task))
    assert err.value.info().problems == [f"{name}: Extra inputs are not permitted"]


def test_cancelling_a_sync_skill_sets_its_flag_and_it_stops(tmp_path: Any) -> None:
    skill = skills("tests.fixtures.context_skills:poll_then_write", "test.poll")
    started, marker, stopped = tmp_path / "started", tmp_path / "marker", tmp_path / "stopped"
    data = {"started": str(started), "marker": str(marker), "stopped": str(stopped),
            "seconds": 30}  # fmt: skip
    context = SkillContext.detached()

    async def cancel_once_started() -> None:
        running = asyncio.create_task(skill(data, context))
        while not started.exists():
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(cancel_once_started())
    assert context.cancelled
    assert context.wait_cancelled(0)
    # asyncio.run waited for the worker thread: it returned through the flag, not the clock
    assert stopped.read_text() == context.task_id
    assert not marker.exists()


def test_the_flag_wakes_a_waiting_thread() -> None:
    context = SkillContext.detached()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(context.wait_cancelled(30)))
    waiter.start()
    context.cancel()
    waiter.join(30)
    assert woke == [True] and context.cancelled


def test_a_direct_call_gets_a_detached_context() -> None:
    skill = skills("tests.fixtures.context_skills:ids", "test.ids")
    seen = asyncio.run(skill({"note": "x"}))
    assert seen["idempotency_key"] == seen["task_id"] and seen["execution_id"] is None
