"""Running one step of a workflow: its condition, approval gate, fan-out, retries, timeout
and error policy, its model budget and its sub-workflow.

The engine starts one asyncio task per running step and hands it to a `StepRunner`; the
runner records every change through the run's `Recorder` and asks the engine's dispatcher
for each attempt, so after a restart a step goes on under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from cluster.errors import DafnckError, ErrorInfo
from cluster.quotas import Quotas
from workflows.dispatch import Dispatcher, StepFailed, StepOutcome, StepRequest, step_error
from workflows.execution import ApprovalDecision, Execution, ExecutionStatus, StepStatus
from workflows.expressions import EvalLimits, compile_expr, render_async
from workflows.fanout import FanOut
from workflows.loops import Loops
from workflows.pins import pin_for
from workflows.run import OpenGate, Recorder, Run
from workflows.spec import Approval as Gate
from workflows.spec import StepSpec
from workflows.waits import Clock, Waits

log = logging.getLogger(__name__)

_ON_TIMEOUT = {"approve": "approved", "reject": "rejected", "fail": "timed_out"}


class _Engine(Protocol):
    """What a step needs of the engine: its dispatcher, and executions for sub-workflows."""

    dispatcher: Dispatcher
    runs: dict[str, Run]
    quotas: Quotas
    clock: Clock

    @property
    def limits(self) -> EvalLimits: ...

    async def execute(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        parent: str | None = None,
        execution_id: str | None = None,
    ) -> Execution: ...

    async def wait(self, execution_id: str, timeout_s: float | None = None) -> Execution: ...

    async def cancel(self, execution_id: str, by: str = "", reason: str = "") -> Execution: ...


class StepRunner(FanOut, Loops, Waits):
    """Runs top-level steps of the engine's executions, one asyncio task each."""

    def __init__(self, engine: _Engine, recorder: Recorder) -> None:
        self._engine = engine
        self._rec = recorder

    @property
    def limits(self) -> EvalLimits:
        return self._engine.limits

    @property
    def most_items(self) -> int:
        return self._engine.quotas.for_each_items

    @property
    def clock(self) -> Clock:
        return self._engine.clock

    async def run(self, run: Run, step: StepSpec) -> None:
        """The task of one step: it ends with the step's record, never with an error."""
        try:
            await self._body(run, step)
        except asyncio.CancelledError:
            raise
        except DafnckError as exc:  # a bad expression or input: the step fails, not the engine
            await self._fail(run, step, step_error(exc))
        finally:
            run.tasks.pop(step.id, None)
            run.wake.set()

    async def _body(self, run: Run, step: StepSpec) -> None:
        context, limits = run.context(), self._engine.limits
        if step.when is not None and not await compile_expr(step.when).evaluate_async(
            context, limits
        ):
            self._rec.step_done(
                run, step.id, StepStatus.SKIPPED, "step.skipped", data={"reason": "when was false"}
            )
            return
        if step.approval and not await self._approved(run, step):
            return
        try:
            if step.sleep or step.wait:  # they record their own end
                await (
                    self._sleep(run, step, context) if step.sleep else self._signalled(run, step)
                )
                return
            output = await (
                self._fan_out(run, step, context)
                if step.for_each
                else self._repeat(run, step, context)
                if step.repeat
                else self._attempts(
                    run, step, step.id, await render_async(step.with_, context, limits)
                )
            )
        except StepFailed as exc:
            await self._fail(run, step, exc.error)
            return
        self._rec.step_done(run, step.id, StepStatus.SUCCEEDED, "step.succeeded", output=output)

    async def _fail(self, run: Run, step: StepSpec, error: ErrorInfo) -> None:
        """Record the failure, or run the step's fallback and let its result stand in."""
        if step.fallback:
            self._rec.change(
                run,
                step.id,
                StepStatus.RUNNING,
                "step.fallback",
                data={"fallback": step.fallback, "error": error.model_dump()},
            )
            fallback = run.step(step.fallback)
            await self._body(run, fallback)
            state = run.state(fallback.id)
            if state.status == StepStatus.SUCCEEDED:
                self._rec.step_done(
                    run,
                    step.id,
                    StepStatus.SUCCEEDED,
                    "step.succeeded",
                    output=state.output,
                    data={"via": fallback.id},
                )
                return
            error = state.error or error
        self._rec.step_done(run, step.id, StepStatus.FAILED, "step.failed", error=error)

    # -- approval gates --------------------------------------------------------------------

    async def _approved(
        self, run: Run, step: StepSpec, gate: Gate | None = None, key: str | None = None
    ) -> bool:
        """Wait at the step's gate (or `gate`, for item `key`). Raises: StepFailed (rejected)."""
        key = key or step.id
        state = run.state(key)
        if gate is None and state.approval and state.approval.decision == "approved":
            return True  # decided before a restart
        gate = gate or step.approval
        assert gate is not None
        deadline = (state.started_at or time.time()) + gate.timeout_s if gate.timeout_s else None
        state.started_at = state.started_at or time.time()
        # Open before it is announced: a decision that arrives while the change is being
        # saved finds the gate instead of a Conflict.
        future: asyncio.Future[ApprovalDecision] = asyncio.get_running_loop().create_future()
        run.gates[key] = OpenGate(future, deadline)
        try:
            self._rec.change(
                run,
                key,
                StepStatus.WAITING_APPROVAL,
                "step.waiting_approval",
                data={
                    "prompt": await render_async(gate.prompt, run.context(), self._engine.limits)
                },
            )
            if run.execution.status == ExecutionStatus.RUNNING:
                await self._rec.set_status(
                    run, ExecutionStatus.WAITING_APPROVAL, "execution.waiting_approval"
                )
            decision = state.approval = await self._decision(gate, future, deadline)
        finally:
            run.gates.pop(key, None)
        if run.execution.status == ExecutionStatus.WAITING_APPROVAL and not run.gates:
            await self._rec.set_status(run, ExecutionStatus.RUNNING, "execution.running")
        if decision.decision == "approved":
            self._rec.change(
                run, key, StepStatus.QUEUED, "step.approved", data=decision.model_dump()
            )
            return True
        error_type = "Rejected" if decision.decision == "rejected" else "ApprovalTimeout"
        raise StepFailed(
            ErrorInfo(
                type=error_type, message=f"{decision.decision} by {decision.by}: {decision.reason}"
            )
        )

    @staticmethod
    async def _decision(
        gate: Gate, future: asyncio.Future[ApprovalDecision], deadline: float | None
    ) -> ApprovalDecision:
        """A person's decision, or the gate's own when its deadline passes first."""
        try:
            timeout = max(deadline - time.time(), 0) if deadline else None
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return ApprovalDecision(
                decision=_ON_TIMEOUT[gate.on_timeout],
                by="timeout",
                reason=f"no decision in {gate.timeout_s}s",
            )

    async def _budget_gate(self, run: Run, step: StepSpec, key: str, error: ErrorInfo) -> None:
        """Hold the step that ran out of budget for a person; approving waives the budget
        for the rest of this step, whose attempt goes on (its replies replay for free).

        Raises: StepFailed (rejected).
        """
        prompt = f"{error.message}; approve to let step {key!r} go on past the budget"
        state = run.state(key)
        state.attempts -= 1  # the same attempt goes on (also when resumed at the gate)
        try:
            await self._approved(run, step, Gate(prompt=prompt), key)
        except StepFailed:
            state.attempts += 1
            raise
        state.budget_waived = True

    # -- fan-out -----------------------------------------------------------------------------

    # -- attempts --------------------------------------------------------------------------

    async def _attempts(self, run: Run, step: StepSpec, key: str, data: dict[str, Any]) -> Any:
        """Dispatch with the step's retry policy; returns the output. Raises: StepFailed."""
        state = run.state(key)
        while True:
            outcome = await self._attempt(run, step, key, data)
            error = outcome.error if not outcome.ok else None
            if error is None:
                return outcome.output
            if error.type == "BudgetNeedsApproval" and not state.budget_waived:
                await self._budget_gate(run, step, key, error)
                continue
            if not _retryable(step, error, state.attempts):
                raise StepFailed(error)
            delay = step.retry.delay_s(state.attempts + 1)
            self._rec.change(
                run,
                key,
                StepStatus.RUNNING,
                "step.retried",
                data={"attempt": state.attempts, "error": error.model_dump(), "delay_s": delay},
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, run: Run, step: StepSpec, key: str, data: dict[str, Any]
    ) -> StepOutcome:
        """One attempt, within the step's timeout (a timeout is a failed outcome).

        Waits while the execution is paused. An attempt cut short (its timeout, a cancel of
        the execution or of the fan-out it belongs to) is cancelled through the dispatcher.
        """
        await run.unpaused()
        state = run.state(key)
        state.attempts += 1
        state.started_at = state.started_at or time.time()
        pinned = await pin_for(run, step, self._engine.dispatcher, self._rec)
        self._rec.change(
            run, key, StepStatus.RUNNING, "step.started", data={"attempt": state.attempts}
        )
        request = StepRequest(
            pinned=pinned,
            execution_id=run.execution.id,
            step_id=key,
            kind=step.kind,
            target=step.target,
            input=data,
            attempt=state.attempts,
            timeout_s=step.timeout_s,
            idempotency_key=f"{run.execution.id}/{key}",
            workflow=run.execution.workflow,
            budget=run.spec.budget,
            budget_waived=state.budget_waived,
        )
        work = (
            self._child(run, step, key, data)
            if step.kind == "workflow"
            else self._engine.dispatcher.run(request)
        )
        try:
            return await asyncio.wait_for(work, step.timeout_s)
        except TimeoutError as exc:
            await self._cancel(step, request)
            return StepOutcome(ok=False, error=step_error(exc))
        except asyncio.CancelledError:
            await self._cancel(step, request)
            raise

    async def _cancel(self, step: StepSpec, request: StepRequest) -> None:
        """Stop the attempt's work where it runs (a sub-workflow cancels its own child)."""
        if step.kind == "workflow":
            return
        try:
            await asyncio.shield(self._engine.dispatcher.cancel(request))
        except Exception:  # the attempt is over for the engine whatever the dispatcher says
            log.exception("cancelling step %s of %s failed", request.step_id, request.execution_id)

    async def _child(self, run: Run, step: StepSpec, key: str, data: dict[str, Any]) -> StepOutcome:
        """Run a sub-workflow; after a restart, wait for the child started before it."""
        engine, state = self._engine, run.state(key)
        if state.child_execution is None:
            child = await engine.execute(step.target, data, parent=run.execution.id)
            state.child_execution = child.id
            self._rec.change(
                run, key, StepStatus.RUNNING, "step.child_started", data={"child": child.id}
            )
        child_id = state.child_execution
        try:
            child = await engine.wait(child_id)
        except asyncio.CancelledError:
            if child_id in engine.runs:
                await engine.cancel(child_id, reason=f"parent {run.execution.id} cancelled it")
            raise
        if child.status == ExecutionStatus.SUCCEEDED:
            return StepOutcome(ok=True, output=child.outputs)
        state.child_execution = None  # a retry starts a fresh child
        message = child.error.message if child.error else child.status.value
        return StepOutcome(
            ok=False,
            error=ErrorInfo(
                type="WorkflowFailed",
                message=f"sub-workflow {child_id} {child.status.value}: {message}",
            ),
        )


def _retryable(step: StepSpec, error: ErrorInfo, attempts: int) -> bool:
    if attempts >= step.retry.attempts:
        return False
    return error.type in step.retry.on if step.retry.on else error.retryable


__all__ = ["StepRunner"]
