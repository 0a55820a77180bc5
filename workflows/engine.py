"""The workflow engine: runs executions of workflow specs, durably, knowing nothing of Ray.

A `Dispatcher` runs one step (the supervisor supplies one that routes to agents), so the
engine is tested with a fake dispatcher and a real store. Each execution is a `Run`: an
asyncio loop (here) that starts the steps whose needs are done, and one asyncio task per
running step (`workflows.steps`) that handles its condition, approval gate, fan-out,
retries, timeout and error policy. Every change is committed (event and state together)
before the engine acts on it, so `recover()` after a crash resumes each execution where
its record stands: finished steps keep their outputs, steps that were in flight are
dispatched again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from cluster.errors import Conflict, DafnckError, ErrorInfo, QuotaExceeded
from cluster.quotas import Quotas
from workflows.control import Control
from workflows.dispatch import Dispatcher, StepFailed, StepOutcome, StepRequest, step_error
from workflows.execution import (
    ApprovalDecision,
    Execution,
    ExecutionStatus,
    StepState,
    StepStatus,
)
from workflows.expressions import EvalLimits, render_async
from workflows.pins import resolve_pins
from workflows.run import Recorder, Run, new_event
from workflows.spec import WorkflowSpec
from workflows.steps import StepRunner
from workflows.store import ExecutionStore
from workflows.triggers import decide
from workflows.validate import effective_needs
from workflows.waits import Clock, SystemClock, before
from workflows.writer import Writer

log = logging.getLogger(__name__)


SpecLoader = Callable[[str, int | None], tuple[int, WorkflowSpec]]


class WorkflowEngine(Control):
    """Executes workflows; one instance per supervisor (per tenant)."""

    def __init__(
        self,
        store: ExecutionStore,
        dispatcher: Dispatcher,
        load_spec: SpecLoader,
        quotas: Quotas | None = None,
        runs: dict[str, Run] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        #: What timers, signal deadlines and workflow timeouts wait on.
        self.clock: Clock = clock or SystemClock()
        self.dispatcher = dispatcher
        #: The tenant's limits: executions running, fan-out items, depth, expressions.
        self.quotas = quotas or Quotas()
        self._load_spec = load_spec
        #: Executions in flight (given when an observer reads it too).
        self.runs: dict[str, Run] = {} if runs is None else runs
        self.writer = Writer(store, on_refused=self._refused)
        self.recorder = Recorder(self.writer)
        self._steps = StepRunner(self, self.recorder)

    @property
    def limits(self) -> EvalLimits:
        """What one expression may spend, from the tenant's quotas."""
        return EvalLimits(self.quotas.expression_steps, self.quotas.expression_timeout_s)

    # -- starting and finding executions --------------------------------------------------

    async def execute(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        parent: str | None = None,
        execution_id: str | None = None,
    ) -> Execution:
        """Start an execution of workflow `name` (its latest version unless one is named).

        Raises:
            NotFound: no such workflow; InputInvalid: the inputs don't match its types;
            QuotaExceeded: executions_running, or workflow_depth (naming the chain).
        """
        if parent:
            self._check_depth(name, parent)
        self._check_room()
        version, spec = self._load_spec(name, version)
        checked = spec.check_inputs(inputs)
        execution = Execution(
            workflow=name,
            version=version,
            inputs=checked,
            parent=parent,
            status=ExecutionStatus.RUNNING,
        )
        if execution_id:
            execution.id = execution_id
        if spec.timeout_s:
            execution.deadline = self.clock.now() + spec.timeout_s
        execution.pins = await resolve_pins(self.dispatcher, spec)
        execution.steps = {s.id: StepState() for s in spec.steps}
        started = new_event(
            execution, "execution.started", data={"version": version, "parent": parent}
        )
        self.store.commit(execution, steps=list(execution.steps), events=[started])
        self._start(spec, execution)
        return execution

    def _check_room(self) -> None:
        """Raises: QuotaExceeded (executions_running)."""
        most = self.quotas.executions_running
        if len(self.runs) >= most:
            tenant = self.store.store.tenant
            raise QuotaExceeded(
                "executions_running",
                most,
                f"tenant {tenant!r} has {len(self.runs)} executions running; wait for some to end",
            )

    def _check_depth(self, name: str, parent: str) -> None:
        """Raises: QuotaExceeded (workflow_depth), naming the chain of workflows."""
        chain, at = [name], parent
        while at and len(chain) <= self.quotas.workflow_depth + 1:
            execution = self.get(at)
            chain.insert(0, execution.workflow)
            at = execution.parent or ""
        if len(chain) - 1 > self.quotas.workflow_depth:
            raise QuotaExceeded(
                "workflow_depth",
                self.quotas.workflow_depth,
                f"sub-workflow chain {' -> '.join(chain)} is too deep; does a workflow "
                "call itself through another?",
            )

    def _start(self, spec: WorkflowSpec, execution: Execution) -> Run:
        run = Run(
            spec,
            execution,
            effective_needs(spec),
            fallbacks={s.fallback for s in spec.steps if s.fallback},
        )
        run.index()
        self.runs[execution.id] = run
        run.loop_task = asyncio.get_running_loop().create_task(self._drive(run))
        return run

    def get(self, execution_id: str) -> Execution:
        """The live state when the engine drives it, else the stored one. Raises: NotFound."""
        run = self.runs.get(execution_id)
        return run.execution if run else self.store.load(execution_id)

    async def wait(self, execution_id: str, timeout_s: float | None = None) -> Execution:
        run = self.runs.get(execution_id)
        if run:
            await asyncio.wait_for(run.done.wait(), timeout_s)
        return self.get(execution_id)

    async def recover(self) -> list[str]:
        """Resume every execution the store says is not finished (after a restart)."""
        resumed = []
        for execution_id in self.store.active():
            if execution_id in self.runs:
                continue
            execution = self.store.load(execution_id)
            _, spec = self._load_spec(execution.workflow, execution.version)
            for state in execution.steps.values():
                if state.status == StepStatus.RUNNING:
                    # An attempt cut short goes on under its own number, so what its agent
                    # journalled (LLM replies, tool results) still applies.
                    state.attempts = max(state.attempts - 1, 0)
                if state.status in (
                    StepStatus.RUNNING,
                    StepStatus.QUEUED,
                    StepStatus.WAITING_APPROVAL,
                ):
                    state.status = StepStatus.PENDING  # dispatched again, same idempotency key
            self.store.commit(execution, events=[new_event(execution, "execution.recovered")])
            self._start(spec, execution)
            resumed.append(execution_id)
        return resumed

    # -- operator actions -----------------------------------------------------------------

    def _live(self, execution_id: str, *allowed: ExecutionStatus) -> Run:
        run = self.runs.get(execution_id)
        if run is None:
            status = self.store.load(execution_id).status
            raise Conflict(f"execution {execution_id} is {status.value}; it is not running here")
        if allowed and run.execution.status not in allowed:
            wanted = " or ".join(s.value for s in allowed)
            raise Conflict(
                f"execution {execution_id} is {run.execution.status.value}, not {wanted}"
            )
        return run

    async def pause(self, execution_id: str) -> Execution:
        """No new step, fan-out item or retry starts; running attempts finish.

        Raises: Conflict, NotFound.
        """
        run = self._live(execution_id, ExecutionStatus.RUNNING, ExecutionStatus.WAITING_APPROVAL)
        run.paused(True)
        await self.recorder.set_status(run, ExecutionStatus.PAUSED, "execution.paused")
        return run.execution

    async def resume(self, execution_id: str) -> Execution:
        """Raises: Conflict (not paused), NotFound."""
        run = self._live(execution_id, ExecutionStatus.PAUSED)
        await self.recorder.set_status(run, ExecutionStatus.RUNNING, "execution.resumed")
        run.paused(False)
        run.wake.set()
        return run.execution

    async def cancel(self, execution_id: str, by: str = "", reason: str = "") -> Execution:
        """Cancel running steps (through the dispatcher) and end the execution."""
        run = self._live(
            execution_id,
            ExecutionStatus.RUNNING,
            ExecutionStatus.PAUSED,
            ExecutionStatus.WAITING_APPROVAL,
        )
        await self._finish(
            run,
            ExecutionStatus.CANCELLED,
            ErrorInfo(type="Cancelled", message=reason or f"cancelled by {by or 'operator'}"),
        )
        return run.execution

    async def decide(
        self, execution_id: str, step_id: str, approved: bool, by: str, reason: str = ""
    ) -> Execution:
        """Approve or reject a step waiting at its gate. Raises: Conflict, NotFound."""
        run = self._live(execution_id)
        gate = run.gates.get(step_id)
        if gate is None or gate.future.done():
            status = run.execution.steps.get(step_id, StepState()).status.value
            raise Conflict(
                f"step {step_id!r} of execution {execution_id} is {status}, not waiting for approval"
            )
        gate.future.set_result(
            ApprovalDecision(decision="approved" if approved else "rejected", by=by, reason=reason)
        )
        await asyncio.sleep(0)
        return run.execution

    async def retry(self, execution_id: str) -> Execution:
        """Run a failed or cancelled execution again from the steps that did not succeed."""
        if execution_id in self.runs:
            raise Conflict(
                f"execution {execution_id} is still {self.runs[execution_id].execution.status.value}"
            )
        execution = self.store.load(execution_id)
        if execution.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
            raise Conflict(
                f"execution {execution_id} is {execution.status.value}; only failed or cancelled ones can be retried"
            )
        self._check_room()
        _, spec = self._load_spec(execution.workflow, execution.version)
        reset = [k for k, s in execution.steps.items() if s.status != StepStatus.SUCCEEDED]
        for key in reset:
            execution.steps[key] = (
                StepState(attempts=execution.steps[key].attempts) if "[" not in key else StepState()
            )
        execution.status, execution.error, execution.outputs = ExecutionStatus.RUNNING, None, None
        execution.deadline = self.clock.now() + spec.timeout_s if spec.timeout_s else None
        self.store.commit(
            execution,
            steps=reset,
            events=[new_event(execution, "execution.retried", data={"steps": reset})],
        )
        self._start(spec, execution)
        return execution

    def _refused(self, execution: Execution, error: ErrorInfo) -> None:
        """The writer failed the execution (a value it holds cannot be stored): stop it."""
        run = self.runs.get(execution.id)
        if run is None:
            return
        for task in list(run.tasks.values()):
            task.cancel()
        run.wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def _drive(self, run: Run) -> None:
        try:
            while not run.execution.status.terminal:
                if run.execution.status in (
                    ExecutionStatus.RUNNING,
                    ExecutionStatus.WAITING_APPROVAL,
                ):
                    self._schedule(run)
                    if not run.tasks or self._failed(run):
                        await self._conclude(run)
                        break
                run.wake.clear()
                if not await before(run.wake.wait(), run.execution.deadline, self.clock):
                    message = (
                        f"the execution ran past its workflow's timeout_s ({run.spec.timeout_s}s)"
                    )
                    error = ErrorInfo(type="WorkflowTimeout", message=message)
                    await self._finish(run, ExecutionStatus.FAILED, error)
        except Exception as exc:  # a bug or an outage must not leave the execution hanging silently
            log.exception("execution %s stopped", run.execution.id)
            await self._finish(run, ExecutionStatus.FAILED, step_error(exc))
        finally:
            run.done.set()
            self.runs.pop(run.execution.id, None)

    def _schedule(self, run: Run) -> None:
        """Start every ready step whose trigger rule is met; skip the others."""
        while run.ready:
            step = run.step(run.ready.pop(0))
            run.unfinished.pop(step.id, None)
            if run.state(step.id).status.done:
                continue  # cancelled or skipped by a person before it could start
            go, why = decide(step.trigger_rule, run.upstream(step.id))
            if not go:
                self.recorder.step_done(
                    run, step.id, StepStatus.SKIPPED, "step.skipped", data={"reason": why}
                )
                continue
            self.recorder.change(run, step.id, StepStatus.QUEUED, "step.queued")
            run.tasks[step.id] = asyncio.get_running_loop().create_task(self._steps.run(run, step))

    def _failed(self, run: Run) -> list[str]:
        """Top-level steps that failed and whose failure fails the execution."""
        return [
            k for k, s in run.execution.steps.items()
            if s.status == StepStatus.FAILED and "[" not in k and not self._tolerated(run, k)
        ]  # fmt: skip

    async def _conclude(self, run: Run) -> None:
        states = run.execution.steps
        failed = self._failed(run)
        if failed:
            first = states[failed[0]].error or ErrorInfo(type="StepFailed", message="step failed")
            await self._finish(
                run,
                ExecutionStatus.FAILED,
                ErrorInfo(type=first.type, message=f"step {failed[0]!r} failed: {first.message}"),
            )
            return
        try:
            outputs = await render_async(dict(run.spec.outputs), run.context(), self.limits)
        except DafnckError as exc:
            await self._finish(run, ExecutionStatus.FAILED, step_error(exc))
            return
        run.execution.outputs = outputs
        await self._finish(run, ExecutionStatus.SUCCEEDED)

    def _tolerated(self, run: Run, step_id: str) -> bool:
        try:
            return run.step(step_id).on_error == "continue"
        except KeyError:
            return False

    async def _finish(
        self, run: Run, status: ExecutionStatus, error: ErrorInfo | None = None
    ) -> None:
        for task in list(run.tasks.values()):
            task.cancel()
        if run.tasks:
            await asyncio.gather(*run.tasks.values(), return_exceptions=True)
        changed = []
        if status == ExecutionStatus.CANCELLED:
            for key, state in run.execution.steps.items():
                if not state.status.done:
                    state.status, state.finished_at = StepStatus.CANCELLED, time.time()
                    changed.append(key)
        run.execution.status, run.execution.error = status, error
        events = [
            new_event(
                run.execution,
                f"execution.{status.value}",
                data={"error": error.model_dump() if error else None},
            )
        ]
        await self.recorder.commit(run, events[0], changed)
        run.wake.set()


__all__ = ["Dispatcher", "StepFailed", "StepOutcome", "StepRequest", "WorkflowEngine"]
