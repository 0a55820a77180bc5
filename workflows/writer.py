"""The engine's one writer: every queued change of every execution, one MULTI per batch.

Step changes are queued and written on the next turn of the event loop, together; an
execution-level change (started, paused, ended, ...) is queued and awaited, so the caller
knows it is durable. The event loop keeps running while Redis syncs its AOF. If the store
is down, the batch stays queued (newer changes merged behind it, in order) and is tried
again: an outage delays the record and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from cluster.errors import DafnckError
from workflows.execution import Event, Execution
from workflows.store import Change, ExecutionStore

log = logging.getLogger(__name__)

#: How soon queued changes are written again after the store refused them.
RETRY_S = 0.5


class Writer:
    """Batches execution changes into transactions, in the order they were made."""

    def __init__(self, store: ExecutionStore) -> None:
        self.store = store
        self._pending: dict[str, Change] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def record(self, execution: Execution, step: str, event: Event) -> None:
        """Queue a step's change (its state as it is when written, and the event)."""
        change = self._change(execution)
        change.steps.add(step)
        change.events.append(event)
        self._kick()

    async def commit(self, execution: Execution, event: Event, steps: Iterable[str] = ()) -> None:
        """Queue an execution-level change; return once it (and all before it) is written."""
        change = self._change(execution)
        change.steps.update(steps)
        change.events.append(event)
        change.meta = True
        written = asyncio.get_running_loop().create_future()
        self._waiters.append(written)
        self._kick()
        await asyncio.shield(written)

    def _change(self, execution: Execution) -> Change:
        change = self._pending.get(execution.id)
        if change is None:
            change = self._pending[execution.id] = Change(execution)
        return change

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            try:
                await self.store.commit_many_async(batch.values())
            except DafnckError:
                log.warning("store unavailable; changes of %d executions wait", len(batch))
                self._pending = _merge(batch, self._pending)
                self._waiters = waiters + self._waiters
                await asyncio.sleep(RETRY_S)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _merge(older: dict[str, Change], newer: dict[str, Change]) -> dict[str, Change]:
    """`older` with `newer` appended behind it, execution by execution."""
    for execution_id, change in newer.items():
        kept = older.get(execution_id)
        if kept is None:
            older[execution_id] = change
            continue
        kept.steps |= change.steps
        kept.events += change.events
        kept.meta = kept.meta or change.meta
    return older
