"""`repeat`: a step run again and again until its `until` condition holds (a structured
loop, WCP21), at most `max_iterations` times.

Each iteration is recorded under its own key, `<step>[<n>]`, with its own attempts and
idempotency key (`<execution>/<step>[<n>]`), so after a restart finished iterations keep
their outputs and the loop goes on from the first unfinished one.
"""

from __future__ import annotations

from typing import Any, Protocol

from cluster.errors import ErrorInfo
from workflows.dispatch import StepFailed
from workflows.execution import StepStatus
from workflows.expressions import EvalLimits, compile_expr, render_async
from workflows.run import Recorder, Run
from workflows.spec import StepSpec


class _Runner(Protocol):
    _rec: Recorder

    @property
    def limits(self) -> EvalLimits: ...

    async def _attempts(self, run: Run, step: StepSpec, key: str, data: dict[str, Any]) -> Any: ...


class Loops:
    """The `repeat` part of `StepRunner`."""

    async def _repeat(self: _Runner, run: Run, step: StepSpec, context: dict[str, Any]) -> Any:
        """The last iteration's output. Raises: StepFailed (an iteration failed, or
        `until` never held)."""
        loop = step.repeat
        assert loop is not None
        output: Any = None
        for i in range(loop.max_iterations):
            key = f"{step.id}[{i}]"
            run.state(step.id).items = [f"{step.id}[{j}]" for j in range(i + 1)]
            done = run.execution.steps.get(key)
            if done and done.status == StepStatus.SUCCEEDED:
                output = done.output  # finished before a restart
            else:
                scope = {**context, "iteration": i, "output": output}
                data = await render_async(step.with_, scope, self.limits)
                try:
                    output = await self._attempts(run, step, key, data)
                except StepFailed as exc:
                    self._rec.step_done(
                        run, key, StepStatus.FAILED, "step.iteration.failed", error=exc.error
                    )
                    raise
                self._rec.step_done(
                    run, key, StepStatus.SUCCEEDED, "step.iteration.succeeded", output=output
                )
            scope = {**context, "iteration": i, "output": output}
            if await compile_expr(loop.until).evaluate_async(scope, self.limits):
                return output
        raise StepFailed(
            ErrorInfo(
                type="RepeatExhausted",
                message=f"until {loop.until!r} did not hold after {loop.max_iterations} iterations",
            )
        )


__all__ = ["Loops"]
