"""The contract between the engine and whoever runs a step: request, outcome, dispatcher.

The supervisor supplies a `Dispatcher` that routes to agents; tests supply a fake. A step
that ends in failure is raised inside the engine as `StepFailed`, carrying the error that
the step's record keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cluster.errors import DafnckError, ErrorInfo


@dataclass(frozen=True, kw_only=True)
class StepRequest:
    """What the dispatcher needs to run one attempt of one step (or fan-out item); built
    with keywords only, so a new field never shifts a caller's arguments."""

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
    #: The agent version (`name@version`) the execution resolved `target` to at its
    #: start; None routes to the newest active one.
    pinned: str | None = None


@dataclass
class StepOutcome:
    ok: bool
    output: Any = None
    error: ErrorInfo | None = None


class Dispatcher(Protocol):
    async def run(self, request: StepRequest) -> StepOutcome:
        """Run the step."""
        ...

    async def cancel(self, request: StepRequest) -> None:
        """Stop the work of `request` wherever it runs (the engine calls it when an attempt
        is cut short: its timeout, a cancelled execution, a fan-out whose join is met); a
        no-op when it has ended."""
        ...


@runtime_checkable
class Pinning(Protocol):
    """A dispatcher that can say which agent version a target routes to now."""

    async def pin(self, kind: str, target: str) -> str | None:
        """`name@version` of the newest active agent serving `target`; None if none."""
        ...


class StepFailed(DafnckError):
    """A step ended in failure; carries the error that the step's record keeps."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error)

    @property
    def error(self) -> ErrorInfo:
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def message(self) -> str:
        return self.error.message


def step_error(exc: BaseException) -> ErrorInfo:
    """The error a step's (or an execution's) record keeps for `exc`."""
    if isinstance(exc, StepFailed):
        return exc.error
    if isinstance(exc, TimeoutError):
        return ErrorInfo(type="TaskTimeout", message="step timed out", retryable=True)
    if isinstance(exc, DafnckError):
        return exc.info()
    return ErrorInfo(type=type(exc).__name__, message=str(exc))


__all__ = ["Dispatcher", "Pinning", "StepFailed", "StepOutcome", "StepRequest", "step_error"]
