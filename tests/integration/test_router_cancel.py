"""Cancellation through the router on a real cluster: a cancelled waiter or call gives its
slot back and stops its task on the replica, so its side effect never lands and the pool
keeps taking work after many more cancellations than it has slots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from actors.client import Client
from actors.models import AgentSpec
from cluster.errors import TaskCancelled
from tests.integration.helpers import replica_health, slow_spec, wait_until

pytestmark = pytest.mark.timeout(120)


def marker_spec(**fields: Any) -> AgentSpec:
    return AgentSpec(
        name="marker",
        capabilities=["test.marker"],
        entrypoint="tests.fixtures.cancellable:write_later",
        **fields,
    )


def test_cancelled_waiters_beyond_capacity_leave_the_pool_usable(client: Client) -> None:
    (record,) = client.agents.apply(slow_spec(max_concurrency=1, max_queued=0))
    router, tasks = client.tasks.router, client.tasks

    async def cancel_waiters(count: int) -> None:
        for _ in range(count):
            call = await router.submit_async(tasks.task("test.slow", {"seconds": 60}))
            waiter = asyncio.create_task(router.result_async(call))
            await asyncio.sleep(0)  # the waiter is awaiting the replica
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter

    asyncio.run(cancel_waiters(5))  # five times the pool's one slot
    (replica,) = client.health()["pools"][record.agent_id]["replicas"]

    def busy() -> tuple[int, int]:
        health = replica_health(replica)
        return health["in_flight"], health["queued"]

    wait_until(lambda: busy() == (0, 0) or None, 10, "the replica to stop")
    # a 60 s sleep still running on the one-slot replica would hold this one back
    result = tasks.run("test.slow", {"seconds": 0.01}, timeout_s=20)
    assert result.ok, result.error


def test_a_cancelled_task_never_writes_its_side_effect(client: Client, tmp_path: Path) -> None:
    client.agents.apply(marker_spec(max_concurrency=2))
    router, tasks = client.tasks.router, client.tasks
    started, marker = tmp_path / "started", tmp_path / "marker"
    call = tasks.submit(
        "test.marker", {"started": str(started), "marker": str(marker), "seconds": 10}
    )
    wait_until(started.exists, 30, "the skill to start")
    assert router.cancel(call)
    with pytest.raises(TaskCancelled):
        router.result(call)
    # A twin started after it, with the same wait, on the same replica: once its marker is
    # written, the cancelled task's would have been too.
    twin_started, twin_marker = tmp_path / "twin_started", tmp_path / "twin_marker"
    twin = tasks.run(
        "test.marker",
        {"started": str(twin_started), "marker": str(twin_marker), "seconds": 10},
    )
    assert twin.ok and twin_marker.exists()
    assert not marker.exists()
    assert router.in_flight(call.replica) == 0
