"""The store under faults: a SIGKILLed Valkey loses no acknowledged write (AOF with
`appendfsync always`), and an outage gives callers a clear retryable error, delays the
workflow record without losing it, and heals within seconds of the store's return."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.models import AgentRecord, AgentSpec
from actors.registry import AgentRegistry
from cluster.errors import StoreUnavailable
from cluster.settings import load_settings
from cluster.store import Store, connect_store
from cluster.valkey import free_port, start_server
from workflows.engine import StepOutcome, StepRequest, WorkflowEngine
from workflows.execution import ExecutionStatus
from workflows.spec import WorkflowSpec
from workflows.store import BlobStore, ExecutionStore

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


class Server:
    """A Valkey server this test owns: killed and started again on the same port and files."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dkchaos"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_server(self.dir, self.port)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def store(self) -> Store:
        settings = load_settings(
            redis_url=self.url,
            state_dir=str(self.dir),
            redis_connect_timeout_s=0.5,
            redis_socket_timeout_s=1.0,
        )
        return connect_store(settings)


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(10)


def test_sigkill_after_10000_acknowledged_writes_loses_none(server: Server) -> None:
    store = server.store()
    for start in range(0, 10_000, 500):  # pipelined: every reply is read before the kill
        pipe = store.redis.pipeline(transaction=False)
        for i in range(start, start + 500):
            pipe.set(store.key("ack", str(i)), str(i))
        assert pipe.execute() == [True] * 500  # each True is Valkey's acknowledgement
    server.kill()
    server.start()
    again = server.store()
    pipe = again.redis.pipeline(transaction=False)
    for i in range(10_000):
        pipe.get(again.key("ack", str(i)))
    values = pipe.execute()
    assert values == [str(i) for i in range(10_000)]


class Echo:
    async def run(self, request: StepRequest) -> StepOutcome:
        await asyncio.sleep(0.2)
        return StepOutcome(ok=True, output=request.input.get("n", 0) + 1)

    async def cancel(self, request: StepRequest) -> None:
        """Nothing to cut short: a step ends by itself within 0.2 s."""


async def test_an_outage_of_ten_seconds_gives_a_retryable_error_and_heals(server: Server) -> None:
    store = server.store()
    registry = AgentRegistry(store)
    spec = AgentSpec(name="a", capabilities=["x.y"], entrypoint="m:f")
    executions = ExecutionStore(store, BlobStore(str(server.dir / "blobs")))
    chain = WorkflowSpec.model_validate({"name": "chain", "steps": [
        {"id": f"s{i}", "uses": "x.y", "with": {"n": f"${{{{ steps.s{i - 1}.output }}}}" if i else 0}}
        for i in range(8)
    ]})  # fmt: skip
    executions.define("chain", chain.model_dump_json(by_alias=True))

    def load(name: str, version: int | None) -> tuple[int, WorkflowSpec]:
        return 1, chain

    engine = WorkflowEngine(executions, Echo(), load)
    execution = await engine.execute("chain")
    await asyncio.sleep(0.3)

    server.kill()
    down_at = time.monotonic()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        registry.register_agent(AgentRecord(spec=spec))
    assert caught.value.retryable and server.url in str(caught.value)
    assert time.monotonic() - started < 5, "the error must come within seconds, not hang"
    await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the engine keeps going

    server.start()
    back_at = time.monotonic()
    recovered: Any = None
    while recovered is None and time.monotonic() - back_at < 5:
        try:
            recovered = registry.register_agent(AgentRecord(spec=spec))
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    assert recovered is not None, "the store did not work again within 5 s of its return"
    done = await engine.wait(execution.id, 30)
    assert done.status == ExecutionStatus.SUCCEEDED
    flushed_by = time.monotonic() + 10  # the writer flushes what waited
    while executions.load(execution.id).status != ExecutionStatus.SUCCEEDED:
        assert time.monotonic() < flushed_by, "the succeeded execution never reached the store"
        await asyncio.sleep(0.05)
    kinds = [e.type for _, e in executions.events(execution.id)]
    assert kinds.count("step.succeeded") == 8 and kinds[-1] == "execution.succeeded"
