"""One execution in memory while the engine drives it, and how its changes are recorded.

A `Run` knows which steps are ready and which wait; a `Recorder` turns each change into an
event queued for the writer, so every change is committed (event and state together)
before the engine acts on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import ErrorInfo
from workflows.execution import (
    ApprovalDecision,
    Event,
    Execution,
    ExecutionStatus,
    StepState,
    StepStatus,
)
from workflows.spec import StepSpec, WorkflowSpec
from workflows.triggers import EARLY, decide, outcome
from workflows.writer import Writer


@dataclass
class OpenGate:
    """A step waiting for a person's decision."""

    future: asyncio.Future[ApprovalDecision]
    deadline: float | None


@dataclass
class Run:
    """One execution in memory while the engine drives it."""

    spec: WorkflowSpec
    execution: Execution
    needs: dict[str, set[str]]
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    gates: dict[str, OpenGate] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    loop_task: asyncio.Task[None] | None = None
    fallbacks: set[str] = field(default_factory=set)
    #: Steps whose needs are all done, in the order they became so.
    ready: list[str] = field(default_factory=list)
    #: How many needs of each waiting step are not done yet, and who needs whom.
    unfinished: dict[str, int] = field(default_factory=dict)
    dependents: dict[str, list[str]] = field(default_factory=dict)

    #: Steps waiting for a signal: their names and the future a delivery resolves.
    signal_waits: dict[str, tuple[list[str], asyncio.Future[None]]] = field(default_factory=dict)
    #: Set unless the execution is paused: attempts and fan-out items wait for it.
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    by_id: dict[str, StepSpec] = field(default_factory=dict)
    #: Top-level steps that have failed (whether that fails the execution is on_error's call).
    failing: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.by_id = {s.id: s for s in self.spec.steps}
        self.paused(self.execution.status == ExecutionStatus.PAUSED)

    def paused(self, paused: bool) -> None:
        """Hold (or release) new attempts and fan-out items."""
        (self.resumed.clear if paused else self.resumed.set)()

    async def unpaused(self) -> None:
        """Return when the execution is not paused."""
        if not self.resumed.is_set():
            await self.resumed.wait()

    def step(self, step_id: str) -> StepSpec:
        return self.by_id[step_id]

    def state(self, step_id: str) -> StepState:
        return self.execution.steps.setdefault(step_id, StepState())

    def context(self) -> dict[str, Any]:
        """What expressions see: the execution's inputs and `steps.<id>.output`."""
        return {"inputs": self.execution.inputs, "steps": _Outputs(self.execution.steps)}

    def take_signal(self, names: list[str]) -> dict[str, Any] | None:
        """The oldest signal sent under one of `names`, taken out of the record."""
        for i, signal in enumerate(self.execution.signals):
            if signal.get("name") in names:
                return self.execution.signals.pop(i)
        return None

    def deliver(self, name: str) -> None:
        """Wake the first step waiting for signal `name` (it takes it from the record)."""
        for names, future in self.signal_waits.values():
            if name in names and not future.done():
                future.set_result(None)
                return

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
            if count == 0 or self._fires_early(step.id):
                self.ready.append(step.id)

    def finished(self, step_id: str) -> None:
        """A top-level step is done: its dependents may now be ready."""
        for dependent in self.dependents.get(step_id, ()):
            if dependent not in self.unfinished:
                continue
            self.unfinished[dependent] -= 1
            if dependent not in self.ready and (
                self.unfinished[dependent] == 0 or self._fires_early(dependent)
            ):
                self.ready.append(dependent)

    def upstream(self, step_id: str) -> dict[str, str]:
        """How each step that `step_id` needs ended (`workflows.triggers.outcome`)."""
        return {
            need: outcome(self.state(need).status, self.step(need).on_error == "continue")
            for need in self.needs[step_id]
        }

    def _fires_early(self, step_id: str) -> bool:
        rule = self.step(step_id).trigger_rule
        return rule in EARLY and decide(rule, self.upstream(step_id))[0] is True


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


def new_event(
    execution: Execution,
    kind: str,
    step: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """An event of `execution` (of one of its steps when `step` is given)."""
    return Event(type=kind, execution=execution.id, step=step, data=data or {})


class Recorder:
    """Queues each step change for the writer and commits execution-level changes after them."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def change(
        self, run: Run, key: str, status: StepStatus, kind: str, data: dict[str, Any] | None = None
    ) -> None:
        run.state(key).status = status
        self.record(run, key, new_event(run.execution, kind, key, data))

    def step_done(
        self,
        run: Run,
        key: str,
        status: StepStatus,
        kind: str,
        *,
        output: Any = None,
        error: ErrorInfo | None = None,
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
        self.record(run, key, new_event(run.execution, kind, key, payload))

    def record(self, run: Run, key: str, event: Event) -> None:
        """Queue a step's change for the writer.

        A step may be dispatched a moment before its "started" lands: after a crash it is
        dispatched again with the same idempotency key, which at-least-once allows.
        """
        self.writer.record(run.execution, key, event)

    async def commit(self, run: Run, event: Event, steps: Iterable[str] = ()) -> None:
        """Write an execution-level change (after the step changes queued before it)."""
        await self.writer.commit(run.execution, event, steps)

    async def set_status(self, run: Run, status: ExecutionStatus, event: str) -> None:
        run.execution.status = status
        await self.commit(run, new_event(run.execution, event))


__all__ = ["OpenGate", "Recorder", "Run", "new_event"]
