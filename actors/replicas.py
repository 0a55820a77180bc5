"""Ray's side of the router: a task is `AgentActor.run` on the replica's actor handle, a
call is the ObjectRef it returns (`actors.router.ReplicaCalls` over Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.exceptions import RayActorError

from cluster.errors import ReplicaDied


class RayReplicaCalls:
    """Sends tasks to `AgentActor` replicas; Ray's errors become the router's."""

    def send(self, replica: Any, task: dict[str, Any]) -> Any:
        return replica.run.remote(task)

    async def wait_async(self, ref: Any, timeout_s: float) -> dict[str, Any]:
        """Raises: ReplicaDied, TimeoutError."""
        try:
            async with asyncio.timeout(timeout_s):
                return dict(await ref)
        except RayActorError as exc:
            raise ReplicaDied(f"replica died: {type(exc).__name__}") from None

    def cancel(self, ref: Any) -> None:
        """For an async actor method, Ray cancels the replica's asyncio task (the skill sees
        CancelledError); a task still queued on the replica never starts."""
        ray.cancel(ref)
