"""The agent layer's telemetry without Ray: task metrics and spans in the router's meter,
workflow metrics and spans from execution events, pool gauges, and component health."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from actors import observe
from actors.health import PoolHealth, ReplicaHealth, overall, pool_status
from actors.models import Task, TaskContext, TaskResult
from actors.observe import PoolGauges, TaskMeter, TracedDispatcher, WorkflowObserver
from cluster import metrics, tracing
from cluster.settings import Settings, load_settings
from cluster.span_store import execution_spans
from cluster.store import Store
from workflows.engine import StepOutcome, StepRequest
from workflows.execution import Event, Execution, StepState


@pytest.fixture
def traced(settings: Settings, store: Store) -> Iterator[Settings]:
    tracing.shutdown()
    traced = load_settings(redis_url=settings.redis_url, state_dir=str(settings.state_dir),
                           tenant="obs", trace_exporter="redis")  # fmt: skip
    tracing.setup_tracing(traced, "unit")
    yield traced
    tracing.shutdown()


def test_the_meter_counts_a_task_once_across_its_retries() -> None:
    meter = TaskMeter()
    task = Task(capability="meter.a")
    done = metrics.TASKS.value(capability="meter.a", outcome="failed") or 0
    sent = meter.begin(task)
    metrics.sync()  # the gauge is polled
    assert metrics.TASKS_IN_FLIGHT.value(capability="meter.a") == 1
    assert meter.begin(sent) is sent  # a retry: same task id, nothing new
    failed = TaskResult(task_id=task.id, status="failed", error={"type": "X", "message": "m"})
    meter.end(sent, failed)
    meter.end(sent, failed)  # settled once only
    assert metrics.TASKS.value(capability="meter.a", outcome="failed") == done + 1
    metrics.sync()
    assert metrics.TASKS_IN_FLIGHT.value(capability="meter.a") == 0
    assert sent.context.traceparent is None  # untraced: no span, no envelope change


def test_tasks_never_collected_are_counted_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe, "_MAX_OPEN", 2)
    meter = TaskMeter()
    abandoned = metrics.TASKS.value(capability="meter.c", outcome="failed") or 0
    for _ in range(3):
        meter.begin(Task(capability="meter.c"))
    assert metrics.TASKS.value(capability="meter.c", outcome="failed") == abandoned + 1
    metrics.sync()
    assert metrics.TASKS_IN_FLIGHT.value(capability="meter.c") == 2


def test_a_traced_task_carries_its_client_span_to_the_replica(
    traced: Settings, store: Store
) -> None:
    meter = TaskMeter()
    context = TaskContext(tenant="obs", execution_id="e1", step_id="s")
    with tracing.span("step s", attributes={tracing.EXECUTION: "e1"}) as step:
        sent = meter.begin(Task(capability="meter.b", context=context))
    assert sent.context.traceparent
    assert sent.context.traceparent.split("-")[1] == f"{step.get_span_context().trace_id:032x}"
    meter.end(sent, TaskResult(task_id=sent.id, status="succeeded", agent="a@1.0.0"))
    tracing.flush()
    spans = {s["name"]: s for s in execution_spans(store.redis, "obs", "e1")}
    assert spans["task meter.b"]["parent_id"] == spans["step s"]["span_id"]
    assert spans["task meter.b"]["attributes"]["dafnck.agent"] == "a@1.0.0"
    assert sent.context.traceparent.split("-")[2] == spans["task meter.b"]["span_id"]


@dataclass
class FakeRun:
    execution: Execution


class FakeDispatcher:
    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def run(self, request: StepRequest) -> StepOutcome:
        self.seen.append(tracing.current_traceparent())
        return StepOutcome(ok=False, error=None)


async def test_execution_events_move_metrics_and_make_the_execution_span(
    traced: Settings, store: Store
) -> None:
    mirrored: list[str] = []
    runs: dict[str, FakeRun] = {}  # the engine's executions in flight
    observer = WorkflowObserver("obs", lambda pipe, event: mirrored.append(event.type), runs)
    execution = Execution(id="x1", workflow="wf", version=1, created_at=time.time() - 2,
                          steps={"a": StepState(started_at=time.time() - 1)})  # fmt: skip
    ended = metrics.EXECUTIONS.value(workflow="wf", outcome="succeeded") or 0
    steps = metrics.STEPS.value(workflow="wf", outcome="succeeded") or 0
    observer(None, Event(type="execution.started", execution="x1"))
    runs["x1"] = FakeRun(execution)
    dispatcher = FakeDispatcher()
    request = StepRequest(
        execution_id="x1",
        step_id="a",
        kind="capability",
        target="c.x",
        input={},
        attempt=1,
        timeout_s=None,
        idempotency_key="x1/a",
    )
    await TracedDispatcher(dispatcher, observer).run(request)
    observer(None, Event(type="step.succeeded", execution="x1", step="a"))
    observer(None, Event(type="execution.succeeded", execution="x1"))
    assert mirrored == ["execution.started", "step.succeeded", "execution.succeeded"]
    assert metrics.EXECUTIONS.value(workflow="wf", outcome="succeeded") == ended + 1
    assert metrics.STEPS.value(workflow="wf", outcome="succeeded") == steps + 1
    assert (metrics.STEP_SECONDS.value(workflow="wf", outcome="succeeded") or 0) >= 1
    tracing.flush()
    spans = {s["name"]: s for s in execution_spans(store.redis, "obs", "x1")}
    assert spans["step a"]["parent_id"] == spans["workflow wf"]["span_id"]
    assert dispatcher.seen[0] and dispatcher.seen[0].split("-")[2] == spans["step a"]["span_id"]
    assert spans["workflow wf"]["attributes"]["dafnck.workflow"] == "wf"


def test_an_observer_failure_never_fails_the_commit() -> None:
    observer = WorkflowObserver("obs", runs=object())  # type: ignore[arg-type]  # raises inside
    observer(None, Event(type="execution.started", execution="x2"))


@dataclass
class FakeRecord:
    desired_replicas: int


@dataclass
class FakePool:
    record: FakeRecord
    replicas: dict[str, Any]
    health: dict[str, ReplicaHealth]
    restarts: int = 0


def test_pool_gauges_and_restarts_follow_the_pools() -> None:
    gauges = PoolGauges()
    health = {"r1": ReplicaHealth(in_flight=4), "r2": ReplicaHealth()}
    pool = FakePool(FakeRecord(3), {"r1": 1, "r2": 2}, health)
    restarts = metrics.POOL_RESTARTS.value(agent="g@1.0.0") or 0
    gauges.record({"g@1.0.0": pool})
    pool.restarts = 2
    gauges.record({"g@1.0.0": pool})
    assert metrics.POOL_RESTARTS.value(agent="g@1.0.0") == restarts + 2
    assert metrics.POOL_RUNNING.value(agent="g@1.0.0") == 2
    assert metrics.POOL_DESIRED.value(agent="g@1.0.0") == 3
    assert metrics.POOL_QUEUE.value(agent="g@1.0.0") == 4
    gauges.record({})  # removed: its gauges drop to zero
    assert metrics.POOL_RUNNING.value(agent="g@1.0.0") == 0


def test_component_statuses() -> None:
    pool = PoolHealth(
        status="active", desired=2, running=2, replicas={"a": ReplicaHealth(), "b": ReplicaHealth()}
    )
    assert pool_status(pool) == "ok"
    assert pool_status(pool.model_copy(update={"running": 1})) == "degraded"
    blocked = {"a": ReplicaHealth(unresponsive=True), "b": ReplicaHealth(pid=7)}
    assert pool_status(pool.model_copy(update={"replicas": blocked})) == "degraded"
    assert pool_status(pool.model_copy(update={"running": 0})) == "unavailable"
    assert pool_status(pool.model_copy(update={"status": "disabled", "running": 0})) == "ok"
    ok = {"status": "ok"}
    parts = {"store": ok, "hub": ok, "pools": {"p": {"status": "unavailable"}}}
    assert overall(parts) == "degraded"
    assert overall({**parts, "store": {"status": "unavailable"}}) == "unavailable"
    assert overall({"store": ok, "pools": {}}) == "ok"
