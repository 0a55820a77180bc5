"""What a caller routes with: a pool's view (`PoolView`) from the supervisor, and how it
reaches replicas (`ReplicaCalls`; Ray's is `actors.replicas.RayReplicaCalls`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.models import RetryPolicy, Task

Clock = Callable[[], float]


class ReplicaCalls(Protocol):
    """How the router reaches replicas: Ray in production, a fake in unit tests."""

    def send(self, replica: Any, task: dict[str, Any]) -> Any:
        """Start `task` on `replica` (a handle from a `PoolView`); returns the call's handle
        at once."""
        ...

    async def wait_async(self, ref: Any, timeout_s: float) -> dict[str, Any]:
        """The call's `TaskResult` as a dict. Raises: ReplicaDied, TimeoutError."""
        ...

    def cancel(self, ref: Any) -> None:
        """Stop the call on its replica (an async skill sees CancelledError); a no-op once
        the call has answered."""
        ...


@dataclass
class PoolView:
    """What a caller needs to route to one agent's pool."""

    agent_id: str
    replicas: dict[str, Any]  # replica name -> handle (an ActorHandle under Ray)
    schemas: dict[str, dict[str, Any]]  # capability -> JSON schema of the input
    max_concurrency: int
    max_queued: int
    timeout_s: float
    retry: RetryPolicy
    #: When this caller fetched the view, on its own clock (the supervisor's may differ).
    fetched_at: float = field(default_factory=time.monotonic)
    #: The pool may be scaled to zero: a task waits for the replica its arrival wakes.
    waking: bool = False

    @property
    def capacity(self) -> int:
        return len(self.replicas) * (self.max_concurrency + self.max_queued)


def capped(task: Task, pool: PoolView) -> Task:
    """The task with its timeout at most the agent's: a caller cannot hold a slot longer."""
    if task.timeout_s is None or task.timeout_s <= pool.timeout_s:
        return task
    return task.model_copy(update={"timeout_s": pool.timeout_s})


#: (capability, agent selector or None) -> the pool to use. Raises AgentNotFound.
PoolSource = Callable[[str, str | None], PoolView]


__all__ = ["Clock", "PoolSource", "PoolView", "ReplicaCalls", "capped"]
