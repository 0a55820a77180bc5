"""Cancelling work that an API replica runs for an asynchronous task (HTTP tasks, A2A).

The replica that runs a task keeps its asyncio task here; a cancel that arrives on the same
replica cancels it at once. Any replica may receive the cancel, though: the cancel is
always recorded in the task's record first (Redis), and the running replica watches that
record every `WATCH_S` while the work runs, cancelling the work when it sees it. One small
read per running task and interval, no extra channel, and nothing lost if the cancel
arrives while no replica listens (a pubsub message would be).

Cancelling the asyncio task reaches the agent: the router's waiter is cancelled, so
`PoolRouter` gives back the slot and calls `ray.cancel` on the replica's task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

#: How often a running task's record is read for a cancel made on another replica.
WATCH_S = 0.5

T = TypeVar("T")
#: The work this replica runs, by (tenant, kind, task id).
_LOCAL: dict[tuple[str, str, str], asyncio.Task[Any]] = {}


async def run_cancellable(
    key: tuple[str, str, str],
    work: Coroutine[Any, Any, T],
    cancelled: Callable[[], Awaitable[bool]],
) -> T:
    """Await `work`, cancelling it when `cancel_here(key)` is called or `cancelled()` (the
    task's record) says so. Raises CancelledError when it was cancelled."""
    job = asyncio.ensure_future(work)
    _LOCAL[key] = job
    try:
        while True:
            done, _ = await asyncio.wait({job}, timeout=WATCH_S)
            if done:
                return job.result()
            if await cancelled():
                job.cancel()
    except BaseException:
        job.cancel()  # our own waiter cancelled (shutdown): so is the work
        raise
    finally:
        if _LOCAL.get(key) is job:
            del _LOCAL[key]


def cancel_here(key: tuple[str, str, str]) -> bool:
    """Cancel the work of `key` if this replica runs it; False if it does not."""
    job = _LOCAL.get(key)
    if job is None or job.done():
        return False
    job.cancel()
    return True


__all__ = ["WATCH_S", "cancel_here", "run_cancellable"]
