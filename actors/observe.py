"""Metrics and spans of the agent layer, kept out of the cores they watch.

- `TaskMeter`: the router's count, latency and in-flight of tasks, and its "task <capability>"
  CLIENT span whose traceparent the task carries to the replica;
- `task_scope`: the replica's SERVER span (child of that traceparent) and log ids;
- `TracedDispatcher`: a "step <id>" span per step attempt, child of the execution's span;
- `WorkflowObserver`: the execution store's mirror, so every execution and step event also
  moves the metrics and opens or ends the execution's span;
- `record_pools`: the supervisor's pool gauges after each reconcile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from opentelemetry.trace import Span, SpanKind

from actors.models import Task, TaskResult
from cluster import logs, metrics, tracing
from cluster.logs import log_context

log = logging.getLogger(__name__)


#: Tasks a meter tracks at most; beyond, the oldest is counted as abandoned.
_MAX_OPEN = 100_000
_ABANDONED = TaskResult(task_id="-", status="failed", error={"type": "Abandoned", "message": ""})


class TaskMeter:
    """Counts one router's tasks from first send to final result (retries included)."""

    def __init__(self) -> None:
        #: task id -> (start, span, capability)
        self._open: dict[str, tuple[float, Span | None, str]] = {}
        #: capability -> tasks sent and not settled (polled into dafnck_tasks_in_flight)
        self.in_flight: dict[str, int] = {}
        metrics.watch_in_flight(self)

    def begin(self, task: Task) -> Task:
        """Called on every send; the first one starts the clock (and the span, if traced)."""
        if task.id in self._open:
            return task
        span = None
        if tracing.enabled() and (task.context.traceparent or tracing.active()):
            span = tracing.start_span(
                f"task {task.capability}",
                parent=task.context.traceparent,
                kind=SpanKind.CLIENT,
                attributes=_task_attributes(task),
            )
            context = task.context.model_copy(update={"traceparent": tracing.traceparent_of(span)})
            task = task.model_copy(update={"context": context})
        if len(self._open) >= _MAX_OPEN:  # results never collected: forget the oldest
            self._settle(next(iter(self._open)), _ABANDONED)
        self._open[task.id] = (time.perf_counter(), span, task.capability)
        self.in_flight[task.capability] = self.in_flight.get(task.capability, 0) + 1
        return task

    def end(self, task: Task, result: TaskResult) -> None:
        """Called with the final result (after the last retry)."""
        self._settle(task.id, result)

    def _settle(self, task_id: str, result: TaskResult) -> None:
        opened = self._open.pop(task_id, None)
        if opened is None:
            return
        started, span, capability = opened
        outcome = result.status if result.ok or result.error is None else "failed"
        metrics.TASKS.inc(capability=capability, outcome=outcome)
        metrics.TASK_SECONDS.observe(
            time.perf_counter() - started, capability=capability, outcome=outcome
        )
        self.in_flight[capability] -= 1
        if span is not None:
            span.set_attribute("dafnck.agent", result.agent)
            span.set_attribute("dafnck.attempts", result.attempts)
            tracing.end_span(span, result.error.type if result.error else None)


def _task_attributes(task: Task) -> dict[str, Any]:
    ctx = task.context
    return {
        "dafnck.task_id": task.id,
        "dafnck.capability": task.capability,
        tracing.TENANT: ctx.tenant,
        tracing.EXECUTION: ctx.execution_id,
        "dafnck.step_id": ctx.step_id,
        "dafnck.attempt": ctx.attempt,
    }


class task_scope:
    """Around a replica's task: its SERVER span (when it carries a traceparent) and the ids
    on its log lines. `with` yields `done(result)`, which marks a failed result on the span.

    A class, not a generator: it runs on every task, and this costs a few microseconds less.
    """

    __slots__ = ("_agent", "_replica", "_span", "_span_cm", "_task", "_token")

    def __init__(self, task: Task, agent_id: str, replica: str) -> None:
        self._task, self._agent, self._replica = task, agent_id, replica
        self._span_cm: Any = None
        self._span: Any = None

    def __enter__(self) -> Callable[[Any], Any]:
        task, ctx = self._task, self._task.context
        self._token = logs.push(
            tenant=ctx.tenant, agent=self._agent, replica=self._replica, task_id=task.id,
            workflow=ctx.workflow_id, execution_id=ctx.execution_id, step_id=ctx.step_id,
        )  # fmt: skip
        if ctx.traceparent and tracing.enabled():
            attributes = {**_task_attributes(task), "dafnck.agent": self._agent,
                          "dafnck.replica": self._replica}  # fmt: skip
            self._span_cm = tracing.span(f"agent.run {task.capability}", parent=ctx.traceparent,
                                         kind=SpanKind.SERVER, attributes=attributes)  # fmt: skip
            self._span = self._span_cm.__enter__()
        return self._done

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._span_cm is not None:
                self._span_cm.__exit__(*exc_info)
        finally:
            logs.pop(self._token)

    def _done(self, result: Any) -> Any:
        error = getattr(result, "error", None)
        if error is not None and self._span is not None:
            tracing.mark_error(self._span, getattr(error, "type", "failed"))
        return result


@contextlib.contextmanager
def message_scope(message: Any, agent: str, replica: str) -> Iterator[None]:
    """Around a replica's message handler: a CONSUMER span child of the sender's, and ids."""
    attributes = {
        tracing.TENANT: message.tenant or None,
        "dafnck.message_id": message.id,
        "dafnck.agent": agent,
        "dafnck.replica": replica,
        "messaging.operation.type": "process",
        "messaging.message.id": message.id,
        "messaging.message.conversation_id": message.correlation_id,
    }
    with (
        log_context(tenant=message.tenant, agent=agent, replica=replica),
        tracing.span(f"process {message.type}", parent=message.trace_id,
                     kind=SpanKind.CONSUMER, attributes=attributes, root=False),
    ):  # fmt: skip
        yield


# -- workflows -------------------------------------------------------------------------------


class _Request(Protocol):
    execution_id: str
    step_id: str
    attempt: int
    target: str


class _Dispatcher(Protocol):
    async def run(self, request: Any) -> Any: ...

    async def cancel(self, request: Any) -> None: ...


class TracedDispatcher:
    """Wraps the engine's dispatcher: each step attempt runs inside its own span."""

    def __init__(self, inner: _Dispatcher, observer: WorkflowObserver) -> None:
        self.inner = inner
        self.observer = observer

    async def run(self, request: Any) -> Any:
        eid, step = request.execution_id, request.step_id
        span = self._span(request)
        with (
            tracing.use_span(span),
            log_context(execution_id=eid, step_id=step, workflow=self.observer.workflow_of(eid)),
        ):
            # DEBUG: two INFO lines per attempt cost a 1,000-step fan-out ~0.4 s of the loop.
            log.debug("step %s attempt %d runs %s", step, request.attempt, request.target)
            try:
                outcome = await self.inner.run(request)
            except BaseException as exc:
                log.info(
                    "step %s attempt %d stopped: %s", step, request.attempt, type(exc).__name__
                )
                tracing.end_span(span, type(exc).__name__)
                raise
            error = None if outcome.ok else getattr(outcome, "error", None)
            failure = None if outcome.ok else (error.type if error is not None else "failed")
            if failure is None:
                log.info("step %s attempt %d succeeded (%s)", step, request.attempt, request.target)
            else:
                log.info("step %s attempt %d failed: %s: %s", step, request.attempt, failure,
                         error.message if error is not None else "")  # fmt: skip
        tracing.end_span(span, failure)
        return outcome

    async def cancel(self, request: Any) -> None:
        log.info("step %s attempt %d cancelled", request.step_id, request.attempt)
        await self.inner.cancel(request)

    async def pin(self, kind: str, target: str) -> str | None:
        pin = getattr(self.inner, "pin", None)
        return None if pin is None else await pin(kind, target)  # type: ignore[no-any-return]

    def _span(self, request: Any) -> Span:
        """The attempt's span, child of the execution's (none when the execution has none)."""
        parent = self.observer.execution_span(request.execution_id)
        if parent is None:
            return tracing.INVALID_SPAN
        return tracing.start_span(
            f"step {request.step_id}",
            parent=parent,
            attributes={
                tracing.TENANT: self.observer.tenant,
                tracing.EXECUTION: request.execution_id,
                "dafnck.step_id": request.step_id,
                "dafnck.attempt": request.attempt,
                "dafnck.uses": request.target,
            },
        )


_EXECUTION_END = {"execution.succeeded", "execution.failed", "execution.cancelled"}
_STEP_END = {
    "step.succeeded": "succeeded",
    "step.failed": "failed",
    "step.skipped": "skipped",
    "step.item.succeeded": "succeeded",
    "step.item.failed": "failed",
}


class WorkflowObserver:
    """Sees every execution and step event as it is committed (the store's mirror)."""

    def __init__(
        self,
        tenant: str,
        mirror: Callable[[Any, Any], None] | None = None,
        runs: Mapping[str, Any] | None = None,
    ) -> None:
        self.tenant = tenant
        self._mirror = mirror
        #: The engine's executions in flight (`WorkflowEngine.runs`): they name the workflow.
        self.runs: Mapping[str, Any] = {} if runs is None else runs
        self._spans: dict[str, Span] = {}
        self._named: set[str] = set()

    def __call__(self, pipe: Any, event: Any) -> None:
        if self._mirror is not None:
            self._mirror(pipe, event)
        try:
            self.observe(event)
        except Exception:  # telemetry must never fail a commit
            log.debug("could not observe %s", event.type, exc_info=True)

    def workflow_of(self, execution_id: str) -> str | None:
        run = self.runs.get(execution_id)
        return run.execution.workflow if run is not None else None

    def execution_span(self, execution_id: str) -> Span | None:
        span = self._spans.get(execution_id)
        if span is not None and execution_id not in self._named:
            self._name(execution_id, span)
        return span

    def _name(self, execution_id: str, span: Span) -> None:
        """Name the span after its workflow once the engine's run is there to say it."""
        run = self.runs.get(execution_id)
        if run is not None:
            span.update_name(f"workflow {run.execution.workflow}")
            span.set_attribute("dafnck.workflow", run.execution.workflow)
            self._named.add(execution_id)

    def observe(self, event: Any) -> None:
        kind, execution_id = event.type, event.execution
        run = self.runs.get(execution_id)
        workflow = run.execution.workflow if run is not None else "unknown"
        if kind in ("execution.started", "execution.recovered", "execution.retried"):
            self._open(execution_id, event, run)
            with (
                tracing.use_span(self._spans.get(execution_id, tracing.INVALID_SPAN)),
                log_context(execution_id=execution_id, tenant=self.tenant),
            ):
                log.info("execution %s %s", execution_id, kind.partition(".")[2])
        elif kind in _EXECUTION_END:
            self._ended(execution_id, event, run, workflow, kind.partition(".")[2])
        elif kind in _STEP_END:
            state = run.execution.steps.get(event.step) if run is not None else None
            started = state.started_at if state is not None else None
            outcome = _STEP_END[kind]
            metrics.STEPS.inc(workflow=workflow, outcome=outcome)
            if started:
                metrics.STEP_SECONDS.observe(event.at - started, workflow=workflow, outcome=outcome)
        metrics.EXECUTIONS_RUNNING.set(len(self.runs), tenant=self.tenant)

    def _ended(self, execution_id: str, event: Any, run: Any, workflow: str, outcome: str) -> None:
        metrics.EXECUTIONS.inc(workflow=workflow, outcome=outcome)
        if run is not None:
            metrics.EXECUTION_SECONDS.observe(
                event.at - run.execution.created_at, workflow=workflow, outcome=outcome
            )
        span = self._spans.pop(execution_id, tracing.INVALID_SPAN)
        if execution_id not in self._named:
            self._name(execution_id, span)
        self._named.discard(execution_id)
        with (
            tracing.use_span(span),
            log_context(execution_id=execution_id, workflow=workflow, tenant=self.tenant),
        ):
            log.info("execution %s of %s %s", execution_id, workflow, outcome)
        tracing.end_span(span, None if outcome == "succeeded" else outcome)

    def _open(self, execution_id: str, event: Any, run: Any) -> None:
        if execution_id in self._spans or not tracing.enabled():
            return
        parent_id = (event.data or {}).get("parent")
        parent: Any = self._spans.get(parent_id) if parent_id else None
        self._spans[execution_id] = span = tracing.start_span(
            "workflow",
            parent=parent,
            attributes={
                tracing.TENANT: self.tenant,
                tracing.EXECUTION: execution_id,
                "dafnck.event": event.type,
            },
        )
        self._name(execution_id, span)


# -- pools -------------------------------------------------------------------------------------


class PoolGauges:
    """The supervisor's pools as gauges, and restarts as a counter (from the pools' totals)."""

    def __init__(self) -> None:
        self._restarts: dict[str, int] = {}

    def record(self, pools: dict[str, Any]) -> None:
        for agent_id, pool in pools.items():
            metrics.POOL_DESIRED.set(pool.record.desired_replicas, agent=agent_id)
            metrics.POOL_RUNNING.set(len(pool.replicas), agent=agent_id)
            reports = [pool.health.get(n) for n in pool.replicas]  # ReplicaHealth, once probed
            in_flight = sum(r.in_flight or 0 for r in reports if r is not None)
            metrics.POOL_QUEUE.set(in_flight, agent=agent_id)
            seen = self._restarts.get(agent_id, 0)
            if pool.restarts > seen:
                metrics.POOL_RESTARTS.inc(pool.restarts - seen, agent=agent_id)
            self._restarts[agent_id] = pool.restarts
        for gone in set(self._restarts) - set(pools):
            del self._restarts[gone]
            for gauge in (metrics.POOL_DESIRED, metrics.POOL_RUNNING, metrics.POOL_QUEUE):
                gauge.set(0, agent=gone)


__all__ = [
    "PoolGauges",
    "TaskMeter",
    "TracedDispatcher",
    "WorkflowObserver",
    "message_scope",
    "task_scope",
]
