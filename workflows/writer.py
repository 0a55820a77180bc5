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
from collections.abc import Callable, Iterable

from cluster.errors import DafnckError, ErrorInfo
from workflows.execution import Event, Execution, ExecutionStatus, StepStatus
from workflows.store import Change, Encoded, ExecutionStore, Unstorable

log = logging.getLogger(__name__)

#: How soon queued changes are written again after the store refused them.
RETRY_S = 0.5


#: Told when a change could not be stored as it was and its execution was failed for it.
Refused = Callable[[Execution, ErrorInfo], None]


class Writer:
    """Batches execution changes into transactions, in the order they were made.

    A change holding a value that cannot be stored (an unserialisable output) fails its own
    execution: its record is written as failed, with the error naming the value, and
    `on_refused` is told. Every other change of the batch is written; the writer keeps
    running whatever happens to one batch, and every waiter is released.
    """

    def __init__(self, store: ExecutionStore, on_refused: Refused | None = None) -> None:
        self.store = store
        self.on_refused = on_refused
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
                await self._write_batch(batch)
            except DafnckError:
                log.warning("store unavailable; changes of %d executions wait", len(batch))
                self._pending = _merge(batch, self._pending)
                self._waiters = waiters + self._waiters
                await asyncio.sleep(RETRY_S)
                continue
            except Exception:  # never let one batch stop the writer
                log.exception("writing changes of %d executions failed", len(batch))
                try:
                    await self._write_one_by_one(batch)
                except DafnckError:  # what is left of the batch waits for the store
                    self._pending = _merge(batch, self._pending)
                    self._waiters = waiters + self._waiters
                    await asyncio.sleep(RETRY_S)
                    continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write_batch(self, batch: dict[str, Change]) -> None:
        """Encode each change (failing the executions whose values cannot be stored), then
        write them all in one transaction. Raises: StoreUnavailable."""
        encoded = []
        for change in batch.values():
            item = self._encode(change)
            if item is not None:
                encoded.append(item)
        await self.store.write_async(encoded)

    def _encode(self, change: Change) -> Encoded | None:
        try:
            return self.store.encode(change)
        except Exception as exc:
            error = _error(change, exc)
            log.error("execution %s fails: %s", change.execution.id, error.message, exc_info=exc)
            return self._refuse(change, error)

    def _refuse(self, change: Change, error: ErrorInfo) -> Encoded | None:
        """The change rewritten as its execution's failure; None if even that cannot be."""
        execution = change.execution
        for step_id in change.steps:
            state = execution.steps[step_id]
            try:
                self.store.encode_step(execution.id, step_id, state)
            except Exception:
                state.output, state.error = None, error
                if not state.status.done or state.status == StepStatus.SUCCEEDED:
                    state.status = StepStatus.FAILED
        execution.outputs, execution.error = None, error
        execution.status = ExecutionStatus.FAILED
        change.meta = True
        change.events.append(
            Event(
                type="execution.failed", execution=execution.id, data={"error": error.model_dump()}
            )
        )
        if self.on_refused is not None:
            self.on_refused(execution, error)
        try:
            return self.store.encode(change)
        except Exception:
            log.exception("execution %s: its failure cannot be stored either", execution.id)
            return None

    async def _write_one_by_one(self, batch: dict[str, Change]) -> None:
        """After an unexpected failure: each execution's change alone, so one cannot sink
        the others; one that fails again fails its execution. Each change written leaves
        `batch`.

        Raises: StoreUnavailable (`batch` holds what is left).
        """
        for execution_id, change in list(batch.items()):
            try:
                await self._write_batch({execution_id: change})
            except DafnckError:
                raise
            except Exception as exc:
                error = _error(change, exc)
                log.exception("execution %s fails: %s", change.execution.id, error.message)
                try:
                    item = self._refuse(change, error)
                    await self.store.write_async([item] if item else [])
                except Exception:
                    log.exception("execution %s: its failure cannot be stored", change.execution.id)
            del batch[execution_id]


def _error(change: Change, exc: BaseException) -> ErrorInfo:
    if isinstance(exc, Unstorable):
        return ErrorInfo(type="Unstorable", message=exc.message)
    return ErrorInfo(
        type="Unstorable",
        message=f"the record of execution {change.execution.id} cannot be written: "
        f"{type(exc).__name__}: {str(exc)[:300]}",
    )


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
