"""One bad value fails its own execution and nothing else: the engine's writer against the
real Valkey, with 30 executions running beside the one whose outputs hold an Arrow table or
a value nothing can serialise."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster.store import Store
from tests.unit.workflows.test_engine import make, spec
from workflows.execution import ExecutionStatus

EXPECTED = [
    "execution.started", "step.queued", "step.started", "step.succeeded",
    "step.queued", "step.started", "step.succeeded", "execution.succeeded",
]  # fmt: skip


class Opaque:
    """What an agent may hand back that no JSON encoder knows."""


async def test_bad_outputs_fail_alone_and_thirty_neighbours_keep_every_event(
    store: Store, tmp_path: Path
) -> None:
    async def table(data: dict[str, Any]) -> Any:
        return pa.table({"path": ["a.py", "b.py"], "lines": [3, 4]})

    async def opaque(data: dict[str, Any]) -> Any:
        return {"raw": b"\xff", "obj": Opaque()}

    async def echo(data: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        return data["x"]

    engine, _, defs = make(store, tmp_path, {"t": table, "o": opaque, "echo": echo})
    defs.define(spec({"name": "arrow", "outputs": {"files": "${{ steps.a.output }}"},
                      "steps": [{"id": "a", "uses": "t"}]}))  # fmt: skip
    defs.define(spec({"name": "opaque", "outputs": {"what": "${{ steps.a.output }}"},
                      "steps": [{"id": "a", "uses": "o"}]}))  # fmt: skip
    defs.define(spec({"name": "plain", "inputs": {"x": {"type": "integer"}},
                      "outputs": {"x": "${{ steps.b.output }}"},
                      "steps": [{"id": "a", "uses": "echo", "with": {"x": "${{ inputs.x }}"}},
                                {"id": "b", "uses": "echo",
                                 "with": {"x": "${{ steps.a.output }}"}}]}))  # fmt: skip
    started = [await engine.execute("plain", {"x": i}) for i in range(15)]
    arrow = await engine.execute("arrow")
    bad = await engine.execute("opaque")
    started += [await engine.execute("plain", {"x": i}) for i in range(15, 30)]
    ids = [e.id for e in [*started, arrow, bad]]
    await asyncio.wait_for(asyncio.gather(*(engine.wait(i) for i in ids)), timeout=30)

    for i, execution in enumerate(started):
        kept = engine.store.load(execution.id)
        assert kept.status == ExecutionStatus.SUCCEEDED and kept.outputs == {"x": i}
        assert [e.type for _, e in engine.store.events(execution.id)] == EXPECTED

    # A table in the outputs is stored like a step's: as Parquet, read back whole.
    kept = engine.store.load(arrow.id)
    assert kept.status == ExecutionStatus.SUCCEEDED
    assert kept.outputs is not None and kept.outputs["files"].column("lines").to_pylist() == [3, 4]
    assert list((tmp_path / "blobs").rglob("_outputs/0.parquet"))

    failed = engine.store.load(bad.id)
    assert failed.status == ExecutionStatus.FAILED and failed.outputs is None
    assert failed.error is not None and failed.error.type == "Unstorable"
    assert "cannot be stored" in failed.error.message
    assert bad.id not in engine.store.active()
