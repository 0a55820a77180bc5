"""One replica's runtime without Ray: results, failures, timeouts and what it counts."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.agent import AgentRuntime
from actors.models import AgentSpec, Task, TaskContext, TaskResult
from tests.unit.waiting import until

SLOW = AgentSpec(
    name="slow", capabilities=["test.slow"], entrypoint="tests.fixtures.agents:slow", timeout_s=5
)


def runtime(entrypoint: str, *capabilities: str, **fields: Any) -> AgentRuntime:
    spec = AgentSpec(name="agent", capabilities=list(capabilities), entrypoint=entrypoint, **fields)
    return AgentRuntime.build(spec, "acme/agent@1.0.0/1")


def run(rt: AgentRuntime, capability: str, data: dict[str, Any], **fields: Any) -> TaskResult:
    return asyncio.run(rt.run(Task(capability=capability, input=data, **fields)))


def test_runs_a_task_and_reports_who_ran_it() -> None:
    rt = runtime("tests.fixtures.agents:echo", "test.echo")
    task = Task(
        capability="test.echo", input={"text": "hi", "times": 2}, context=TaskContext(attempt=2)
    )
    result = asyncio.run(rt.run(task))
    assert result.ok
    assert result.output["text"] == "hihi"
    assert (result.task_id, result.agent, result.replica, result.attempts) == (
        task.id,
        "agent@1.0.0",
        "acme/agent@1.0.0/1",
        2,
    )
    assert result.finished_at >= result.started_at > 0
    assert rt.health().completed == 1


def test_counts_tasks_in_flight() -> None:
    rt = AgentRuntime.build(SLOW, "r1")

    async def scenario() -> tuple[int, int, list[TaskResult]]:
        running = [
            asyncio.create_task(rt.run(Task(capability="test.slow", input={"seconds": 0.3})))
            for _ in range(3)
        ]
        await until(lambda: rt.health().in_flight == 3, what="three tasks in flight")
        during = rt.health().in_flight
        results = await asyncio.gather(*running)
        return during, rt.health().in_flight, results

    during, after, results = asyncio.run(scenario())
    assert (during, after) == (3, 0)
    assert all(r.ok for r in results)
    assert rt.health().completed == 3
    assert rt.health().busy_s >= 0.9  # three tasks of 0.3 s: the time behind mean latency


def test_a_raising_skill_gives_a_failed_result_with_the_error_type() -> None:
    rt = runtime("tests.fixtures.agents:fail", "test.fail")
    result = run(rt, "test.fail", {"message": "disk on fire"})
    assert result.status == "failed" and not result.ok
    assert result.error is not None
    assert (result.error.type, result.error.message, result.error.retryable) == (
        "ValueError",
        "disk on fire",
        False,
    )
    health = rt.health()
    assert (health.completed, health.failed, health.in_flight) == (0, 1, 0)


def test_a_timeout_gives_a_retryable_task_timeout() -> None:
    rt = AgentRuntime.build(SLOW, "r1")
    result = run(rt, "test.slow", {"seconds": 2}, timeout_s=0.1)
    assert result.error is not None
    assert result.error.type == "TaskTimeout"
    assert result.error.retryable is True
    assert "0.1" in result.error.message
    assert result.duration_ms < 1500
    assert rt.health().in_flight == 0


def test_the_specs_timeout_applies_when_the_task_has_none() -> None:
    spec = SLOW.model_copy(update={"timeout_s": 0.1})
    result = run(AgentRuntime.build(spec, "r1"), "test.slow", {"seconds": 2})
    assert result.error is not None and result.error.type == "TaskTimeout"


def test_bad_input_is_a_failed_result_naming_the_field() -> None:
    rt = runtime("tests.fixtures.agents:echo", "test.echo")
    result = run(rt, "test.echo", {"txt": "typo"})
    assert result.error is not None
    assert result.error.type == "InputInvalid"
    assert "text: Field required" in result.error.message


def test_state_is_kept_across_tasks_of_one_replica() -> None:
    rt = runtime("tests.fixtures.agents:Counter", "counter.add", "counter.get")
    for amount in (1, 2, 3):
        run(rt, "counter.add", {"amount": amount})
    assert run(rt, "counter.get", {}).output == 6


def test_describe_lists_the_skills() -> None:
    rt = runtime("tests.fixtures.agents:Counter", "counter.add", "counter.get")
    assert {cap: info.method for cap, info in rt.describe().items()} == {
        "counter.add": "add",
        "counter.get": "get",
    }
