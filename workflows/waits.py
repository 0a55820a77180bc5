"""Steps that wait instead of dispatching: a durable timer (`sleep`) and an external
signal (`wait`), and the clock they (and the workflow's `timeout_s`) wait on.

Both keep what they wait for in the step's record (`started_at`, from which the wake-up
time and the signal's deadline are counted), so after a supervisor restart the step waits
again for the same moment. A signal is first written into the execution's record
(`Execution.signals`) and only then handed to a waiting step; the step takes it out in
the same transaction that records the step's output, so a signal is taken exactly once.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from cluster.errors import ErrorInfo
from workflows.dispatch import StepFailed
from workflows.execution import StepStatus
from workflows.expressions import EvalLimits, render_async
from workflows.run import Recorder, Run, new_event
from workflows.spec import StepSpec
from workflows.spec_waits import parse_time


class Clock(Protocol):
    """Wall-clock time, and waiting for a moment of it (tests give a fake one)."""

    def now(self) -> float: ...

    async def sleep_until(self, moment: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, moment: float) -> None:
        await asyncio.sleep(max(moment - time.time(), 0))


async def before(work: Awaitable[Any], deadline: float | None, clock: Clock) -> bool:
    """Wait for `work` until `deadline`; whether it finished first."""
    if deadline is None:
        await work
        return True
    waited = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep_until(deadline))
    try:
        await asyncio.wait({waited, timer}, return_when=asyncio.FIRST_COMPLETED)
        return waited.done()
    finally:
        timer.cancel()
        if not waited.done():
            waited.cancel()


def iso(moment: float) -> str:
    stamp = datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat()
    return stamp.replace("+00:00", "Z")


class _Runner(Protocol):
    _rec: Recorder

    @property
    def limits(self) -> EvalLimits: ...

    @property
    def clock(self) -> Clock: ...


class Waits:
    """The waiting steps of `StepRunner`."""

    async def _sleep(self: _Runner, run: Run, step: StepSpec, context: dict[str, Any]) -> None:
        """Raises: StepFailed (`until` is not a time)."""
        assert step.sleep is not None
        state = run.state(step.id)
        state.started_at = state.started_at or self.clock.now()
        if step.sleep.seconds is not None:
            until = state.started_at + step.sleep.seconds
        else:
            text = await render_async(step.sleep.until, context, self.limits)
            try:
                until = parse_time(str(text))
            except ValueError as exc:
                error = ErrorInfo(type="InputInvalid", message=f"sleep.until: {exc}")
                raise StepFailed(error) from None
        self._rec.change(run, step.id, StepStatus.RUNNING, "step.sleeping", {"until": iso(until)})
        await self.clock.sleep_until(until)
        output = {"slept_until": iso(until)}
        self._rec.step_done(run, step.id, StepStatus.SUCCEEDED, "step.succeeded", output=output)

    async def _signalled(self: _Runner, run: Run, step: StepSpec) -> None:
        """Raises: StepFailed (no signal in time, with `on_timeout: fail`)."""
        wait, key = step.wait, step.id
        assert wait is not None
        state = run.state(key)
        state.started_at = state.started_at or self.clock.now()
        deadline = state.started_at + wait.timeout_s if wait.timeout_s else None
        data = {"signals": wait.names, "deadline": iso(deadline) if deadline else None}
        self._rec.change(run, key, StepStatus.RUNNING, "step.waiting_signal", data)
        while (got := run.take_signal(wait.names)) is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            run.signal_waits[key] = (wait.names, future)
            try:
                arrived = await before(future, deadline, self.clock)
            finally:
                run.signal_waits.pop(key, None)
            if not arrived:
                message = f"no signal {' or '.join(wait.names)} within {wait.timeout_s}s"
                if wait.on_timeout == "fail":
                    raise StepFailed(ErrorInfo(type="SignalTimeout", message=message))
                self._rec.step_done(
                    run, key, StepStatus.SKIPPED, "step.skipped", data={"reason": message}
                )
                return
        name, payload = got["name"], got.get("payload")
        output = payload if isinstance(wait.signal, str) else {"signal": name, "payload": payload}
        self._rec.step_done(
            run, key, StepStatus.SUCCEEDED, "step.succeeded", output=output, data={"signal": name}
        )
        # the signal leaves the record in the same transaction as the step's output
        await self._rec.commit(
            run, new_event(run.execution, "step.signal_taken", key, {"signal": name})
        )


__all__ = ["Clock", "SystemClock", "Waits", "before", "iso"]
