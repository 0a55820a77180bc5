"""The writer keeps order and loses nothing when the store refuses a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from cluster.errors import StoreUnavailable
from workflows.execution import Event, Execution
from workflows.store import Change
from workflows.writer import Writer


class FlakyStore:
    """Refuses the first `failures` batches, then records what it is given."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[tuple[str, list[str], bool]]] = []

    async def commit_many_async(self, changes: Iterable[Change]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("Redis at redis://127.0.0.1:1/0 is unreachable")
        self.batches.append([(c.execution.id, [e.type for e in c.events], c.meta) for c in changes])


def event(execution: Execution, kind: str) -> Event:
    return Event(type=kind, execution=execution.id)


async def test_changes_wait_out_a_refusal_in_order_and_every_waiter_is_released() -> None:
    store: Any = FlakyStore(failures=1)
    writer = Writer(store)
    first, second = (
        Execution(id="a", workflow="w", version=1),
        Execution(id="b", workflow="w", version=1),
    )
    writer.record(first, "s1", event(first, "step.started"))
    committing = asyncio.create_task(writer.commit(first, event(first, "execution.paused")))
    await asyncio.sleep(0.05)  # the first batch has been refused by now
    writer.record(first, "s1", event(first, "step.succeeded"))
    later = asyncio.create_task(writer.commit(second, event(second, "execution.started")))
    await asyncio.wait_for(asyncio.gather(committing, later), timeout=5)
    written = [item for batch in store.batches for item in batch]
    assert written == [
        ("a", ["step.started", "execution.paused", "step.succeeded"], True),
        ("b", ["execution.started"], True),
    ]
