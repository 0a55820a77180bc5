"""Execution records: what Redis keeps about one run of a workflow, and its events.

They are `Record`s (unknown fields tolerated); the two the engine updates in place while it
drives a run (`Execution`, `StepState`) are not frozen. A step's or an execution's error is
the platform's one `ErrorInfo`."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field

from cluster.contracts import Record
from cluster.errors import ErrorInfo


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (
            ExecutionStatus.SUCCEEDED,
            ExecutionStatus.FAILED,
            ExecutionStatus.CANCELLED,
        )


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.SKIPPED,
            StepStatus.CANCELLED,
        )


class ApprovalDecision(Record):
    """A person's (or the gate's timeout's) answer at a step's approval gate."""

    decision: str  # approved | rejected | timed_out
    by: str
    reason: str = ""
    at: float = Field(default_factory=time.time)


class StepState(Record):
    model_config = ConfigDict(frozen=False)

    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: for_each steps: how many items there are and how each ended.
    items: list[str] | None = None
    approval: ApprovalDecision | None = None
    #: Set while the step runs as another step's fallback, or as a sub-workflow.
    child_execution: str | None = None
    #: A person approved this step past the workflow's budget: it is no longer checked.
    budget_waived: bool = False


class Execution(Record):
    model_config = ConfigDict(frozen=False)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    workflow: str
    version: int
    status: ExecutionStatus = ExecutionStatus.PENDING
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    steps: dict[str, StepState] = {}
    parent: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    #: When the workflow's `timeout_s` runs out (from the start, or from a retry).
    deadline: float | None = None
    #: The agent version (`name@version`) each step target resolved to for this
    #: execution (workflows with `agent_versions: pinned`, the default).
    pins: dict[str, str] = {}
    #: Signals sent and not yet taken by a waiting step: `{"name", "payload", "at"}` each.
    signals: list[dict[str, Any]] = []


class Event(Record):
    """One change of an execution; the stream of these is its history."""

    type: str  # execution.started, step.queued, step.succeeded, ...
    execution: str
    step: str | None = None
    data: dict[str, Any] = {}
    at: float = Field(default_factory=time.time)
