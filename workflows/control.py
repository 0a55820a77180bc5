"""What people (and other systems) do to a running execution besides pause, resume and
cancel: send it a signal, cancel or skip one of its steps.

A cancelled or skipped step's running work is cancelled through the dispatcher (like a
cancelled execution's); it then counts, for the trigger rules of the steps after it, as
`failed` (cancelled) or `skipped`, and never fails the execution by itself (WCP19).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

from cluster.errors import Conflict, InputInvalid
from workflows.execution import Execution, ExecutionStatus, StepStatus
from workflows.run import Recorder, Run, new_event
from workflows.spec_waits import SIGNAL
from workflows.waits import Clock

#: Signals an execution keeps for steps that have not taken them yet.
MAX_KEPT_SIGNALS = 1000
_LIVE = (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED, ExecutionStatus.WAITING_APPROVAL)


class _Engine(Protocol):
    recorder: Recorder
    clock: Clock

    def _live(self, execution_id: str, *allowed: ExecutionStatus) -> Run: ...


class Control:
    """Signals and per-step cancel and skip, for `WorkflowEngine`."""

    async def signal(self: _Engine, execution_id: str, name: str, payload: Any = None) -> Execution:
        """Send signal `name` to a running execution: a step waiting for it takes it (its
        payload becomes the step's output); otherwise it is kept for the first that will.

        Raises: InputInvalid (a bad name), Conflict (not running or too many kept),
        NotFound.
        """
        if not re.match(SIGNAL, name):
            raise InputInvalid(
                "signal", [f"name {name!r} must be a lowercase word like 'approved'"]
            )
        run = self._live(execution_id, *_LIVE)
        if len(run.execution.signals) >= MAX_KEPT_SIGNALS:
            raise Conflict(
                f"execution {execution_id} keeps {MAX_KEPT_SIGNALS} signals no step took; "
                "send more once its wait steps take them"
            )
        run.execution.signals.append({"name": name, "payload": payload, "at": self.clock.now()})
        event = new_event(run.execution, "execution.signalled", data={"signal": name})
        await self.recorder.commit(run, event)
        run.deliver(name)
        return run.execution

    async def cancel_step(
        self: _Engine, execution_id: str, step_id: str, by: str = "", reason: str = ""
    ) -> Execution:
        """Cancel one step (its work, wherever it runs); the rest of the execution goes
        on. Raises: Conflict (the step has ended, or the execution), NotFound."""
        return await _end_step(self, execution_id, step_id, StepStatus.CANCELLED, by, reason)

    async def skip_step(
        self: _Engine, execution_id: str, step_id: str, by: str = "", reason: str = ""
    ) -> Execution:
        """Skip one step: as if its `when` were false (running work is cancelled).
        Raises: Conflict, NotFound."""
        return await _end_step(self, execution_id, step_id, StepStatus.SKIPPED, by, reason)


async def _end_step(
    engine: _Engine, execution_id: str, step_id: str, status: StepStatus, by: str, reason: str
) -> Execution:
    run = engine._live(execution_id, *_LIVE)
    if step_id not in run.by_id:
        known = ", ".join(sorted(run.by_id))
        raise Conflict(f"execution {execution_id} has no step {step_id!r}; its steps: {known}")
    state = run.state(step_id)
    if state.status.done:
        raise Conflict(f"step {step_id!r} of execution {execution_id} is {state.status.value}")
    run.unfinished.pop(step_id, None)
    verb = "cancelled" if status == StepStatus.CANCELLED else "skipped"
    why = f"{verb} by {by or 'operator'}" + (f": {reason}" if reason else "")
    # Recorded before its task stops, so the steps after it are ready when the loop wakes.
    engine.recorder.step_done(run, step_id, status, f"step.{verb}", data={"reason": why})
    task = run.tasks.get(step_id)
    if task is not None:
        task.cancel()  # its attempt is cancelled through the dispatcher, its items too
        await asyncio.gather(task, return_exceptions=True)
    if run.execution.status == ExecutionStatus.WAITING_APPROVAL and not run.gates:
        await engine.recorder.set_status(run, ExecutionStatus.RUNNING, "execution.running")
    run.wake.set()
    return run.execution


__all__ = ["MAX_KEPT_SIGNALS", "Control"]
