"""The one error hierarchy of DafnckMachine.

Every error says whether retrying may help (`retryable`) and survives pickling, because
Ray carries errors between processes: constructors pass every argument on to
`Exception.__init__`, so `Exception.__reduce__` can rebuild them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorInfo(BaseModel):
    """An error as every surface carries it: a task's result, a step's and an execution's
    record, the API's error body (`{"error": {...}}`), logs. Details ride along under their
    own names: `problems` of bad input, `limit`/`value` of a quota, `retry_after_s`, ..."""

    model_config = ConfigDict(frozen=True, extra="allow")

    #: The error's class name (`QueueFull`), or the agent's own exception's.
    type: str
    #: What went wrong, naming the field or value and what to do instead.
    message: str
    #: Whether trying again (unchanged) may help.
    retryable: bool = False
    #: Bad input: every problem found (text, or `{"field", "problem"}`).
    problems: list[Any] | None = Field(default=None, exclude_if=lambda v: v is None)


class DafnckError(Exception):
    """Root of every error the platform raises on purpose."""

    retryable: bool = False
    #: HTTP status the API answers with; the CLI only prints the message.
    status_code: int = 500

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__

    def __str__(self) -> str:
        return self.message

    def details(self) -> dict[str, Any]:
        """What a subclass adds to the error's `ErrorInfo` (JSON-safe), by field name."""
        return {}

    def info(self) -> ErrorInfo:
        """This error as API bodies, task results, step records and logs carry it."""
        return ErrorInfo(
            type=type(self).__name__,
            message=self.message,
            retryable=self.retryable,
            **self.details(),
        )

    def to_dict(self) -> dict[str, Any]:
        """`info()` as JSON-safe data."""
        return self.info().model_dump(mode="json")


class ConfigError(DafnckError):
    """Settings or a config file cannot be used; the message names the file or field."""

    status_code = 400


class StoreUnavailable(DafnckError):
    """Redis/Valkey cannot be reached or timed out; the message names the URL."""

    retryable = True
    status_code = 503


class StoreFull(DafnckError):
    """Redis/Valkey is at its `maxmemory` and refused a write (nothing was written or
    evicted); retry once space is freed or the limit raised. Answered as 507."""

    retryable = True
    status_code = 507


class NotFound(DafnckError):
    status_code = 404


class AgentNotFound(NotFound):
    """No agent serves the capability or name asked for.

    The message lists the nearest known names so a typo is easy to fix.
    """

    def __init__(self, wanted: str, known: Sequence[str] = (), hint: str = "") -> None:
        super().__init__(wanted, tuple(known), hint)

    @property
    def wanted(self) -> str:
        return str(self.args[0])

    @property
    def message(self) -> str:
        if len(self.args) > 2 and self.args[2]:
            return f"no agent serves {self.wanted!r}; {self.args[2]}"
        known: tuple[str, ...] = self.args[1] if len(self.args) > 1 else ()
        near = difflib.get_close_matches(self.wanted, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        if not known:
            hint = "; no agents are registered"
        elif not near:
            hint = f"; known: {', '.join(map(repr, sorted(known)[:8]))}"
        return f"no agent serves {self.wanted!r}{hint}"


class Conflict(DafnckError):
    """The object is in a state where the operation does not apply."""

    status_code = 409


class SpecInvalid(DafnckError):
    """A spec (agent, workflow, task input) is invalid; every problem is listed."""

    status_code = 422

    def __init__(self, what: str, problems: Iterable[str]) -> None:
        super().__init__(what, tuple(problems))

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(self.args[1]) if len(self.args) > 1 else ()

    @property
    def message(self) -> str:
        return f"{self.args[0]} is invalid: " + "; ".join(self.problems)

    def details(self) -> dict[str, Any]:
        return {"problems": list(self.problems)}


class InputInvalid(SpecInvalid):
    """A task's input does not match the skill's declared schema."""


class QueueFull(DafnckError):
    """The pool has as many tasks in flight as it accepts; try again shortly."""

    retryable = True
    status_code = 429


class QuotaExceeded(DafnckError):
    """A per-tenant quota (`limit`, from the settings' `quotas`) would be passed; the message
    names it and its value. Retrying helps only once something is closed or removed."""

    status_code = 429

    def __init__(self, limit: str, value: float, detail: str = "") -> None:
        super().__init__(limit, value, detail)

    @property
    def limit(self) -> str:
        return str(self.args[0])

    @property
    def value(self) -> float:
        return float(self.args[1])

    @property
    def message(self) -> str:
        detail = f": {self.args[2]}" if len(self.args) > 2 and self.args[2] else ""
        return f"quota {self.limit!r} ({self.value:g}) exceeded{detail}"

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "value": self.value}


class StorageQuotaExceeded(QuotaExceeded):
    """A storage quota (bytes or objects kept) would be passed: answered as 507."""

    status_code = 507


class ReplicaDied(DafnckError):
    """The agent replica running the task died before it answered."""

    retryable = True
    status_code = 503


class TaskTimeout(DafnckError):
    retryable = True
    status_code = 504


# router (#16): a call cancelled through `PoolRouter.cancel`
class TaskCancelled(DafnckError):
    """The task was cancelled before it answered; its replica was told to stop it."""

    status_code = 409


class TaskFailed(DafnckError):
    """The agent's own code raised; the message carries the original error."""

    status_code = 500

    def __init__(
        self, message: str, error_type: str = "Exception", retryable: bool = False
    ) -> None:
        super().__init__(message, error_type, retryable)

    @property
    def error_type(self) -> str:
        return str(self.args[1])

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return bool(self.args[2])

    def info(self) -> ErrorInfo:
        return ErrorInfo(type=self.error_type, message=self.message, retryable=self.retryable)


class Unauthorized(DafnckError):
    """The credential is missing, malformed, unknown, revoked or expired; the message says which
    (and never contains a secret, a password or a one-time code)."""

    status_code = 401


class Forbidden(DafnckError):
    """Authenticated, but not allowed: the role does not grant the action, or the caller is
    not a participant of the channel."""

    status_code = 403

    @classmethod
    def for_role(cls, role: str, action: str) -> Forbidden:
        return cls(
            f"role {role!r} is not allowed to {action!r}; use a credential whose role grants it"
        )


class RateLimited(DafnckError):
    """Too many requests for a key, a tenant or a login; `retry_after_s` says when to retry."""

    retryable = True
    status_code = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s)

    @property
    def retry_after_s(self) -> float:
        return float(self.args[1])

    def details(self) -> dict[str, Any]:
        return {"retry_after_s": self.retry_after_s}


class BudgetExceeded(DafnckError):
    """A token or cost budget (the task's or the workflow's) is used up; the task stops.

    Not retryable: running it again would spend more of what is already gone.
    """

    status_code = 402


class BudgetNeedsApproval(BudgetExceeded):
    """A budget whose policy asks a person was used up: a workflow holds the step at an
    approval gate, and approving it lets the step go on without that budget."""


class ToolMayHaveRun(DafnckError):
    """A tool call was journalled as started but never as finished (its runner died), and
    the tool is not idempotent, so running it again could repeat its effect."""

    status_code = 409


class ProviderError(DafnckError):
    """An LLM provider failed after its SDK's own retries (429, 5xx, timeout, a reply that
    does not parse). Not retryable, so task retries never stack on the SDK's."""

    status_code = 502


class OutputInvalid(DafnckError):
    """An LLM's replies did not satisfy the output schema (or it kept calling tools) within
    the configured attempts; the message holds the last reply and the error."""

    status_code = 422


class OutboundRefused(DafnckError):
    """An outbound call a tenant named (webhook, LLM `base_url`, MCP or A2A url) would reach
    an address the platform does not allow (loopback, private, link-local, cloud metadata,
    ...); the message names the field or host and why. Not retryable: see `outbound_allow`."""

    status_code = 422


class ClusterUnavailable(DafnckError):
    """No Ray cluster or system actor could be reached."""

    retryable = True
    status_code = 503


__all__ = [
    "AgentNotFound",
    "BudgetExceeded",
    "BudgetNeedsApproval",
    "ClusterUnavailable",
    "ConfigError",
    "Conflict",
    "DafnckError",
    "ErrorInfo",
    "Forbidden",
    "InputInvalid",
    "NotFound",
    "OutboundRefused",
    "OutputInvalid",
    "ProviderError",
    "QueueFull",
    "QuotaExceeded",
    "RateLimited",
    "ReplicaDied",
    "SpecInvalid",
    "StorageQuotaExceeded",
    "StoreFull",
    "StoreUnavailable",
    "TaskCancelled",
    "TaskFailed",
    "TaskTimeout",
    "ToolMayHaveRun",
    "Unauthorized",
]
