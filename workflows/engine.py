"""The workflow engine: runs executions of workflow specs, durably, knowing nothing of Ray.

A `Dispatcher` runs one step (the supervisor supplies one that routes to agents), so the
engine is tested with a fake dispatcher and a real store. Each execution is a `Run`: an
asyncio loop that starts the steps whose needs are done, and one asyncio task per
running step that handles its condition, approval gate, fan-out, retries, timeout and
error policy. Every change is committed (event and state together) before the engine
acts on it, so `recover()` after a crash resumes each execution where its record stands:
finished steps keep their outputs, steps that were in flight are dispatched again with
the same idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.errors import Conflict, DafnckError
from workflows.execution import (
    Approval,
    Event,
    Execution,
    ExecutionStatus,
    StepError,
    StepState,
    StepStatus,
)
from workflows.expressions import compile_expr, render
from workflows.spec import Approval as Gate
from workflows.spec import StepSpec, WorkflowSpec
from workflows.store import ExecutionStore
from workflows.validate import effective_needs
from workflows.writer import Writer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRequest:
    """What the dispatcher needs to run one attempt of one step (or fan-out item)."""

    execution_id: str
    step_id: str
    kind: str  # capability | agent
    target: str
    input: dict[str, Any]
    attempt: int
    timeout_s: float | None
    #: The same for every attempt and after a supervisor restart, so agents can deduplicate.
    idempotency_key: str
    workflow: str = ""
    #: The workflow's model budget (a `WorkflowBudget`), unless a person waived it here.
    budget: Any = None
    budget_waived: bool = False


@dataclass
class StepOutcome:
    ok: bool
    output: Any = None
    error: StepError | None = None


class Dispatcher(Protocol):
    async def run(self, request: StepRequest) -> StepOutcome:
        """Run the step; cancelling the awaiting task cancels the work."""
        ...


class StepFailed(DafnckError):
    """A step ended in failure; carries the error that the step's record keeps."""

    def __init__(self, error: StepError) -> None:
        super().__init__(error)

    @property
    def error(self) -> StepError:
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def message(self) -> str:
        return self.error.message


def _error(exc: BaseException) -> StepError:
    if isinstance(exc, StepFailed):
        return exc.error
    if isinstance(exc, TimeoutError):
        return StepError(type="TaskTimeout", message="step timed out", retryable=True)
    if isinstance(exc, DafnckError):
        return StepError(type=type(exc).__name__, message=exc.message, retryable=exc.retryable)
    return StepError(type=type(exc).__name__, message=str(exc))


@dataclass
class _Gate:
    """A step waiting for a person's decision."""

    future: asyncio.Future[Approval]
    deadline: float | None


@dataclass
class Run:
    """One execution in memory while the engine drives it."""

    spec: WorkflowSpec
    execution: Execution
    needs: dict[str, set[str]]
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    gates: dict[str, _Gate] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    loop_task: asyncio.Task[None] | None = None
    fallbacks: set[str] = field(default_factory=set)
    #: Steps whose needs are all done, in the order they became so.
    ready: list[str] = field(default_factory=list)
    #: How many needs of each waiting step are not done yet, and who needs whom.
    unfinished: dict[str, int] = field(default_factory=dict)
    dependents: dict[str, list[str]] = field(default_factory=dict)

    by_id: dict[str, StepSpec] = field(default_factory=dict)
    #: Top-level steps that have failed (whether that fails the execution is on_error's call).
    failing: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.by_id = {s.id: s for s in self.spec.steps}

    def step(self, step_id: str) -> StepSpec:
        return self.by_id[step_id]

    def state(self, step_id: str) -> StepState:
        return self.execution.steps.setdefault(step_id, StepState())

    def index(self) -> None:
        """Work out which pending steps are ready and how many needs the others wait for."""
        self.dependents = {s.id: [] for s in self.spec.steps}
        for step_id, needs in self.needs.items():
            for need in needs:
                self.dependents[need].append(step_id)
        self.failing = {
            s.id for s in self.spec.steps if self.state(s.id).status == StepStatus.FAILED
        }
        for step in self.spec.steps:
            if self.state(step.id).status != StepStatus.PENDING or step.id in self.fallbacks:
                continue
            count = sum(1 for n in self.needs[step.id] if not self.state(n).status.done)
            self.unfinished[step.id] = count
            if count == 0:
                self.ready.append(step.id)

    def finished(self, step_id: str) -> None:
        """A top-level step is done: its dependents may now be ready."""
        for dependent in self.dependents.get(step_id, ()):
            if dependent in self.unfinished:
                self.unfinished[dependent] -= 1
                if self.unfinished[dependent] == 0:
                    self.ready.append(dependent)


class _Outputs(Mapping[str, dict[str, Any]]):
    """`steps.<id>.output` for expressions, read from the live states without copying them."""

    def __init__(self, states: dict[str, StepState]) -> None:
        self._states = states

    def __getitem__(self, step_id: str) -> dict[str, Any]:
        return {"output": self._states[step_id].output}

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._states if "[" not in k)

    def __len__(self) -> int:
        return sum(1 for _ in self)


SpecLoader = Callable[[str, int | None], tuple[int, WorkflowSpec]]


class WorkflowEngine:
    """Executes workflows; one instance per supervisor (per tenant)."""

    def __init__(
        self, store: ExecutionStore, dispatcher: Dispatcher, load_spec: SpecLoader
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self._load_spec = load_spec
        self.runs: dict[str, Run] = {}
        self.writer = Writer(store)

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
            NotFound: no such workflow; InputInvalid: the inputs don't match its types.
        """
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
        execution.steps = {s.id: StepState() for s in spec.steps}
        started = self._event(
            execution, "execution.started", data={"version": version, "parent": parent}
        )
        self.store.commit(execution, steps=list(execution.steps), events=[started])
        self._start(spec, execution)
        return execution

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
            self.store.commit(execution, events=[self._event(execution, "execution.recovered")])
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
        """No new step starts; running ones finish. Raises: Conflict, NotFound."""
        run = self._live(execution_id, ExecutionStatus.RUNNING, ExecutionStatus.WAITING_APPROVAL)
        await self._set_status(run, ExecutionStatus.PAUSED, "execution.paused")
        return run.execution

    async def resume(self, execution_id: str) -> Execution:
        """Raises: Conflict (not paused), NotFound."""
        run = self._live(execution_id, ExecutionStatus.PAUSED)
        await self._set_status(run, ExecutionStatus.RUNNING, "execution.resumed")
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
            StepError(type="Cancelled", message=reason or f"cancelled by {by or 'operator'}"),
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
            Approval(decision="approved" if approved else "rejected", by=by, reason=reason)
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
        _, spec = self._load_spec(execution.workflow, execution.version)
        reset = [k for k, s in execution.steps.items() if s.status != StepStatus.SUCCEEDED]
        for key in reset:
            execution.steps[key] = (
                StepState(attempts=execution.steps[key].attempts) if "[" not in key else StepState()
            )
        execution.status, execution.error, execution.outputs = ExecutionStatus.RUNNING, None, None
        self.store.commit(
            execution,
            steps=reset,
            events=[self._event(execution, "execution.retried", data={"steps": reset})],
        )
        self._start(spec, execution)
        return execution

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
                await run.wake.wait()
        except Exception as exc:  # a bug or an outage must not leave the execution hanging silently
            log.exception("execution %s stopped", run.execution.id)
            await self._finish(run, ExecutionStatus.FAILED, _error(exc))
        finally:
            run.done.set()
            self.runs.pop(run.execution.id, None)

    def _schedule(self, run: Run) -> None:
        """Start every ready step (a step after a skipped one is skipped too)."""
        while run.ready:
            step = run.step(run.ready.pop(0))
            run.unfinished.pop(step.id, None)
            upstream = [run.state(n).status for n in run.needs[step.id]]
            if any(u in (StepStatus.SKIPPED, StepStatus.CANCELLED) for u in upstream):
                self._step_done(
                    run,
                    step.id,
                    StepStatus.SKIPPED,
                    "step.skipped",
                    data={"reason": "an upstream step did not run"},
                )
                continue
            self._change(run, step.id, StepStatus.QUEUED, "step.queued")
            run.tasks[step.id] = asyncio.get_running_loop().create_task(self._run_step(run, step))

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
            first = states[failed[0]].error or StepError(type="StepFailed", message="step failed")
            await self._finish(
                run,
                ExecutionStatus.FAILED,
                StepError(type=first.type, message=f"step {failed[0]!r} failed: {first.message}"),
            )
            return
        try:
            outputs = render(dict(run.spec.outputs), self._context(run))
        except DafnckError as exc:
            await self._finish(run, ExecutionStatus.FAILED, _error(exc))
            return
        run.execution.outputs = outputs
        await self._finish(run, ExecutionStatus.SUCCEEDED)

    def _tolerated(self, run: Run, step_id: str) -> bool:
        try:
            return run.step(step_id).on_error == "continue"
        except KeyError:
            return False

    async def _finish(
        self, run: Run, status: ExecutionStatus, error: StepError | None = None
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
            self._event(
                run.execution,
                f"execution.{status.value}",
                data={"error": error.model_dump() if error else None},
            )
        ]
        await self._commit(run, events[0], changed)
        run.wake.set()

    async def _set_status(self, run: Run, status: ExecutionStatus, event: str) -> None:
        run.execution.status = status
        await self._commit(run, self._event(run.execution, event))

    # -- one step --------------------------------------------------------------------------

    async def _run_step(self, run: Run, step: StepSpec) -> None:
        try:
            await self._step_body(run, step)
        except asyncio.CancelledError:
            raise
        except DafnckError as exc:  # a bad expression or input: the step fails, not the engine
            await self._fail(run, step, _error(exc))
        finally:
            run.tasks.pop(step.id, None)
            run.wake.set()

    async def _step_body(self, run: Run, step: StepSpec) -> None:
        context = self._context(run)
        if step.when is not None and not compile_expr(step.when).evaluate(context):
            self._step_done(
                run, step.id, StepStatus.SKIPPED, "step.skipped", data={"reason": "when was false"}
            )
            return
        if step.approval and not await self._approved(run, step):
            return
        try:
            output = await (
                self._fan_out(run, step, context)
                if step.for_each
                else self._attempts(run, step, step.id, render(step.with_, context))
            )
        except StepFailed as exc:
            await self._fail(run, step, exc.error)
            return
        self._step_done(run, step.id, StepStatus.SUCCEEDED, "step.succeeded", output=output)

    async def _fail(self, run: Run, step: StepSpec, error: StepError) -> None:
        """Record the failure, or run the step's fallback and let its result stand in."""
        if step.fallback:
            self._change(
                run,
                step.id,
                StepStatus.RUNNING,
                "step.fallback",
                data={"fallback": step.fallback, "error": error.model_dump()},
            )
            fallback = run.step(step.fallback)
            await self._step_body(run, fallback)
            state = run.state(fallback.id)
            if state.status == StepStatus.SUCCEEDED:
                self._step_done(
                    run,
                    step.id,
                    StepStatus.SUCCEEDED,
                    "step.succeeded",
                    output=state.output,
                    data={"via": fallback.id},
                )
                return
            error = state.error or error
        self._step_done(run, step.id, StepStatus.FAILED, "step.failed", error=error)

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
        self._change(
            run,
            key,
            StepStatus.WAITING_APPROVAL,
            "step.waiting_approval",
            data={"prompt": render(gate.prompt, self._context(run))},
        )
        if run.execution.status == ExecutionStatus.RUNNING:
            await self._set_status(
                run, ExecutionStatus.WAITING_APPROVAL, "execution.waiting_approval"
            )
        future: asyncio.Future[Approval] = asyncio.get_running_loop().create_future()
        run.gates[key] = _Gate(future, deadline)
        try:
            timeout = max(deadline - time.time(), 0) if deadline else None
            decision = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            outcome = {"approve": "approved", "reject": "rejected", "fail": "timed_out"}[
                gate.on_timeout
            ]
            decision = Approval(
                decision=outcome, by="timeout", reason=f"no decision in {gate.timeout_s}s"
            )
        finally:
            run.gates.pop(key, None)
        state.approval = decision
        if run.execution.status == ExecutionStatus.WAITING_APPROVAL and not run.gates:
            await self._set_status(run, ExecutionStatus.RUNNING, "execution.running")
        if decision.decision == "approved":
            self._change(run, key, StepStatus.QUEUED, "step.approved", data=decision.model_dump())
            return True
        error_type = "Rejected" if decision.decision == "rejected" else "ApprovalTimeout"
        raise StepFailed(
            StepError(
                type=error_type, message=f"{decision.decision} by {decision.by}: {decision.reason}"
            )
        )

    async def _fan_out(self, run: Run, step: StepSpec, context: dict[str, Any]) -> list[Any]:
        spec = step.for_each
        assert spec is not None
        items = compile_expr(spec.items).evaluate(context)
        if not isinstance(items, list):
            raise StepFailed(
                StepError(
                    type="InputInvalid",
                    message=f"for_each.items gave {type(items).__name__}, not a list",
                )
            )
        state = run.state(step.id)
        state.items = [f"{step.id}[{i}]" for i in range(len(items))]
        limit = asyncio.Semaphore(spec.max_parallel)

        async def one(index: int, item: Any) -> Any:
            key = f"{step.id}[{index}]"
            done = run.execution.steps.get(key)
            if done and done.status == StepStatus.SUCCEEDED:
                return done.output  # finished before a restart
            async with limit:
                try:
                    output = await self._attempts(
                        run,
                        step,
                        key,
                        render(step.with_, {**context, spec.as_: item, "index": index}),
                    )
                except StepFailed as exc:
                    self._step_done(
                        run, key, StepStatus.FAILED, "step.item.failed", error=exc.error
                    )
                    raise
                self._step_done(
                    run, key, StepStatus.SUCCEEDED, "step.item.succeeded", output=output
                )
                return output

        results = await asyncio.gather(
            *(one(i, x) for i, x in enumerate(items)), return_exceptions=True
        )
        return self._join(step, results)

    def _join(self, step: StepSpec, results: list[Any]) -> list[Any]:
        assert step.for_each is not None
        errors = [r for r in results if isinstance(r, StepFailed)]
        for other in results:
            if isinstance(other, BaseException) and not isinstance(other, StepFailed):
                raise other
        ok = len(results) - len(errors)
        join = step.for_each.join
        need = len(results) if join == "all" else 1 if join == "any" else int(join)
        if ok < need:
            first = errors[0].error if errors else StepError(type="JoinFailed", message="no items")
            raise StepFailed(
                StepError(
                    type=first.type,
                    message=f"{ok} of {len(results)} items succeeded, {need} needed; first error: {first.message}",
                )
            )
        return [None if isinstance(r, BaseException) else r for r in results]

    async def _attempts(self, run: Run, step: StepSpec, key: str, data: dict[str, Any]) -> Any:
        """Dispatch with the step's retry policy; returns the output. Raises: StepFailed."""
        state = run.state(key)
        while True:
            state.attempts += 1
            state.started_at = state.started_at or time.time()
            self._change(
                run, key, StepStatus.RUNNING, "step.started", data={"attempt": state.attempts}
            )
            request = StepRequest(
                run.execution.id,
                key,
                step.kind,
                step.target,
                data,
                state.attempts,
                step.timeout_s,
                f"{run.execution.id}/{key}",
                run.execution.workflow,
                run.spec.budget,
                state.budget_waived,
            )
            work = (
                self._child(run, step, key, data)
                if step.kind == "workflow"
                else self.dispatcher.run(request)
            )
            try:
                outcome = await asyncio.wait_for(work, step.timeout_s)
                error = outcome.error if not outcome.ok else None
            except TimeoutError as exc:
                error = _error(exc)
            if error is None:
                return outcome.output
            if error.type == "BudgetNeedsApproval" and not state.budget_waived:
                await self._budget_gate(run, step, key, error)
                continue
            if not self._retryable(step, error, state.attempts):
                raise StepFailed(error)
            delay = step.retry.delay_s(state.attempts + 1)
            self._change(
                run,
                key,
                StepStatus.RUNNING,
                "step.retried",
                data={"attempt": state.attempts, "error": error.model_dump(), "delay_s": delay},
            )
            await asyncio.sleep(delay)

    async def _budget_gate(self, run: Run, step: StepSpec, key: str, error: StepError) -> None:
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

    async def _child(self, run: Run, step: StepSpec, key: str, data: dict[str, Any]) -> StepOutcome:
        """Run a sub-workflow; after a restart, wait for the child started before it."""
        state = run.state(key)
        if state.child_execution is None:
            child = await self.execute(step.target, data, parent=run.execution.id)
            state.child_execution = child.id
            self._change(
                run, key, StepStatus.RUNNING, "step.child_started", data={"child": child.id}
            )
        child_id = state.child_execution
        try:
            child = await self.wait(child_id)
        except asyncio.CancelledError:
            if child_id in self.runs:
                await self.cancel(child_id, reason=f"parent {run.execution.id} cancelled it")
            raise
        if child.status == ExecutionStatus.SUCCEEDED:
            return StepOutcome(ok=True, output=child.outputs)
        state.child_execution = None  # a retry starts a fresh child
        message = child.error.message if child.error else child.status.value
        return StepOutcome(
            ok=False,
            error=StepError(
                type="WorkflowFailed",
                message=f"sub-workflow {child_id} {child.status.value}: {message}",
            ),
        )

    @staticmethod
    def _retryable(step: StepSpec, error: StepError, attempts: int) -> bool:
        if attempts >= step.retry.attempts:
            return False
        return error.type in step.retry.on if step.retry.on else error.retryable

    # -- recording ------------------------------------------------------------------------

    def _context(self, run: Run) -> dict[str, Any]:
        return {"inputs": run.execution.inputs, "steps": _Outputs(run.execution.steps)}

    def _event(
        self,
        execution: Execution,
        kind: str,
        step: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        return Event(type=kind, execution=execution.id, step=step, data=data or {})

    def _change(
        self, run: Run, key: str, status: StepStatus, kind: str, data: dict[str, Any] | None = None
    ) -> None:
        run.state(key).status = status
        self._record(run, key, self._event(run.execution, kind, key, data))

    def _step_done(
        self,
        run: Run,
        key: str,
        status: StepStatus,
        kind: str,
        *,
        output: Any = None,
        error: StepError | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        state = run.state(key)
        state.status, state.output, state.error, state.finished_at = (
            status,
            output,
            error,
            time.time(),
        )
        if key in run.dependents:
            run.finished(key)
            (run.failing.add if status == StepStatus.FAILED else run.failing.discard)(key)
        payload = dict(data or {})
        if error:
            payload["error"] = error.model_dump()
        self._record(run, key, self._event(run.execution, kind, key, payload))

    def _record(self, run: Run, key: str, event: Event) -> None:
        """Queue a step's change for the writer.

        A step may be dispatched a moment before its "started" lands: after a crash it is
        dispatched again with the same idempotency key, which at-least-once allows.
        """
        self.writer.record(run.execution, key, event)

    async def _commit(self, run: Run, event: Event, steps: Iterable[str] = ()) -> None:
        """Write an execution-level change (after the step changes queued before it)."""
        await self.writer.commit(run.execution, event, steps)


__all__ = ["Dispatcher", "StepFailed", "StepOutcome", "StepRequest", "WorkflowEngine"]
