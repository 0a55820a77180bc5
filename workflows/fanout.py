"""`for_each`: one step run once per item of a list, and the join that decides when the
step is done.

`join` says how many items must succeed: `all` (the default), `any`, or a number k. The
step ends as soon as that is decided: it succeeds when enough items have, and fails when
too many have failed for the rest to make up (so `all` fails at the first failure). Items
still running then are cancelled (through the dispatcher, like a cancelled execution's)
and recorded as `cancelled`; the output lists every item's output in item order, `None`
for an item that failed or was cancelled. `join: none` starts the items and succeeds at
once with `{"started": n}`: the items run on beside the steps after it (their failures
are recorded, never the execution's), and the execution ends when they have.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from cluster.errors import ErrorInfo, QuotaExceeded
from workflows.dispatch import StepFailed
from workflows.execution import StepStatus
from workflows.expressions import EvalLimits, compile_expr, render_async
from workflows.run import Recorder, Run
from workflows.spec import StepSpec


class _Runner(Protocol):
    _rec: Recorder

    @property
    def limits(self) -> EvalLimits: ...

    @property
    def most_items(self) -> int: ...

    async def _attempts(self, run: Run, step: StepSpec, key: str, data: dict[str, Any]) -> Any: ...


class FanOut:
    """The fan-out part of `StepRunner`."""

    async def _fan_out(self: _Runner, run: Run, step: StepSpec, context: dict[str, Any]) -> Any:
        spec = step.for_each
        assert spec is not None
        items = await compile_expr(spec.items).evaluate_async(context, self.limits)
        if not isinstance(items, list):
            raise StepFailed(
                ErrorInfo(
                    type="InputInvalid",
                    message=f"for_each.items gave {type(items).__name__}, not a list",
                )
            )
        if len(items) > self.most_items:
            raise QuotaExceeded(
                "for_each_items",
                self.most_items,
                f"step {step.id!r} would fan out over {len(items)} items",
            )
        run.state(step.id).items = [f"{step.id}[{i}]" for i in range(len(items))]
        limit = asyncio.Semaphore(spec.max_parallel)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(_item(self, run, step, context, limit, i, x))
            for i, x in enumerate(items)
        ]
        if spec.join == "none":
            key = f"{step.id}[]"  # no step id or item key looks like this
            run.tasks[key] = loop.create_task(_detached(run, key, tasks))
            return {"started": len(tasks)}
        return await _join(step, tasks)


async def _item(
    runner: _Runner,
    run: Run,
    step: StepSpec,
    context: dict[str, Any],
    limit: asyncio.Semaphore,
    index: int,
    item: Any,
) -> Any:
    """One item of a fan-out, under the step's parallelism limit."""
    assert step.for_each is not None
    key = f"{step.id}[{index}]"
    done = run.execution.steps.get(key)
    if done and done.status == StepStatus.SUCCEEDED:
        return done.output  # finished before a restart
    rec = runner._rec
    try:
        async with limit:
            await run.unpaused()
            scope = {**context, step.for_each.as_: item, "index": index}
            data = await render_async(step.with_, scope, runner.limits)
            output = await runner._attempts(run, step, key, data)
    except StepFailed as exc:
        rec.step_done(run, key, StepStatus.FAILED, "step.item.failed", error=exc.error)
        raise
    except asyncio.CancelledError:
        if not run.state(key).status.done:
            rec.step_done(run, key, StepStatus.CANCELLED, "step.item.cancelled")
        raise
    rec.step_done(run, key, StepStatus.SUCCEEDED, "step.item.succeeded", output=output)
    return output


async def _join(step: StepSpec, tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """Wait until the join is decided, cancel the items still running, and return the
    outputs in item order. Raises: StepFailed (too few items can succeed)."""
    assert step.for_each is not None
    join = step.for_each.join
    need = len(tasks) if join == "all" else 1 if join == "any" else int(join)
    ok, errors, pending = 0, [], set(tasks)
    try:
        while pending and ok < need <= ok + len(pending):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    ok += 1
                elif isinstance(exc, StepFailed):
                    errors.append(exc.error)
                else:
                    raise exc
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if ok < need:
        first = errors[0] if errors else ErrorInfo(type="JoinFailed", message="not enough items")
        raise StepFailed(
            ErrorInfo(
                type=first.type,
                message=f"{ok} of {len(tasks)} items succeeded, {need} needed; "
                f"first error: {first.message}",
            )
        )
    return [_output(task) for task in tasks]


def _output(task: asyncio.Task[Any]) -> Any:
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


async def _detached(run: Run, key: str, tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for the items of a `join: none` fan-out (cancelled with the execution)."""
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        run.tasks.pop(key, None)
        run.wake.set()


__all__ = ["FanOut"]
