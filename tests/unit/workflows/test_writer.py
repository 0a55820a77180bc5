"""The writer keeps order and loses nothing when the store refuses a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from cluster.errors import StoreUnavailable
from cluster.store import Store
from tests.unit.waiting import until
from workflows.execution import Event, Execution, ExecutionStatus, StepState, StepStatus
from workflows.store import BlobStore, Change, Encoded, ExecutionStore
from workflows.writer import Writer


class FlakyStore:
    """Refuses the first `failures` batches, then records what it is given."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[tuple[str, list[str], bool]]] = []

    def encode(self, change: Change) -> Encoded:
        return Encoded(change, {}, [])

    async def write_async(self, encoded: Iterable[Encoded]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("Redis at redis://127.0.0.1:1/0 is unreachable")
        changes = [e.change for e in encoded]
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
    await until(lambda: store.failures == 0, what="the first batch refused")
    writer.record(first, "s1", event(first, "step.succeeded"))
    later = asyncio.create_task(writer.commit(second, event(second, "execution.started")))
    await asyncio.wait_for(asyncio.gather(committing, later), timeout=5)
    written = [item for batch in store.batches for item in batch]
    assert written == [
        ("a", ["step.started", "execution.paused", "step.succeeded"], True),
        ("b", ["execution.started"], True),
    ]


class Opaque:
    """A value no JSON encoder knows."""


async def test_an_unstorable_value_fails_its_own_execution_and_the_batch_is_written(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executions = ExecutionStore(store, BlobStore(str(tmp_path / "blobs")))
    refused: list[tuple[str, str]] = []
    writer = Writer(executions, on_refused=lambda e, err: refused.append((e.id, err.type)))
    bad = Execution(workflow="w", version=1, status=ExecutionStatus.SUCCEEDED)
    bad.outputs = {"raw": b"\xff", "obj": Opaque()}
    good = Execution(workflow="w", version=1, status=ExecutionStatus.RUNNING)
    good.steps = {"s": StepState(status=StepStatus.RUNNING)}
    writer.record(good, "s", event(good, "step.started"))
    both = asyncio.gather(
        writer.commit(bad, event(bad, "execution.succeeded")),
        writer.commit(good, event(good, "execution.running")),
    )
    await asyncio.wait_for(both, timeout=5)  # every waiter is released
    kept = executions.load(bad.id)
    assert kept.status == ExecutionStatus.FAILED and kept.outputs is None
    assert kept.error is not None and kept.error.type == "Unstorable"
    assert "cannot be stored" in kept.error.message
    assert [e.type for _, e in executions.events(bad.id)][-1] == "execution.failed"
    assert [e.type for _, e in executions.events(good.id)] == ["step.started", "execution.running"]
    assert executions.load(good.id).steps["s"].status == StepStatus.RUNNING
    assert refused == [(bad.id, "Unstorable")]
    assert any(r.levelname == "ERROR" and bad.id in r.getMessage() for r in caplog.records)


class BrokenOnce(FlakyStore):
    """Fails the first batch with an error nobody expected, then records."""

    async def write_async(self, encoded: Iterable[Encoded]) -> None:
        items = list(encoded)
        if len(items) > 1:
            raise RuntimeError("a bug in the store")
        await super().write_async(items)


async def test_an_unexpected_error_writes_each_execution_alone_and_the_writer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store: Any = BrokenOnce(failures=0)
    writer = Writer(store)
    first, second = (
        Execution(id="a", workflow="w", version=1),
        Execution(id="b", workflow="w", version=1),
    )
    writer.record(first, "s1", event(first, "step.started"))
    writer.record(second, "s1", event(second, "step.started"))  # one batch of two
    await asyncio.wait_for(writer.commit(first, event(first, "execution.paused")), timeout=5)
    written = [item for batch in store.batches for item in batch]
    assert ("a", ["step.started"], False) in written
    assert ("b", ["step.started"], False) in written
    assert written[-1] == ("a", ["execution.paused"], True)
    assert any(r.exc_info and "a bug in the store" in str(r.exc_info[1]) for r in caplog.records)
