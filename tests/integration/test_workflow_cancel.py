"""Cancellation reaches the work on a real cluster: an execution cancelled mid-step, and a
`join: any` fan-out that ends at its first item, stop their tasks on the replica, so a
side effect written after a wait never lands; the pool stays usable after many cancels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.client import Client
from actors.models import AgentSpec
from tests.integration.helpers import replica_health, wait_until
from workflows.execution import ExecutionStatus, StepStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(240)

MARKER = {"started": "${{ item.started }}", "marker": "${{ item.marker }}",
          "seconds": "${{ item.seconds }}"}  # fmt: skip


def marker_agent(max_concurrency: int = 4) -> AgentSpec:
    return AgentSpec(
        name="marker",
        capabilities=["test.marker"],
        entrypoint="tests.fixtures.cancellable:write_later",
        replicas={"min": 1, "max": 1},
        max_concurrency=max_concurrency,
    )


def fan(name: str, join: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({
        "name": name, "inputs": {"items": {"type": "array"}},
        "steps": [{"id": "each", "uses": "test.marker", "with": MARKER,
                   "for_each": {"items": "inputs.items", "join": join}}],
    })  # fmt: skip


def item(tmp: Path, name: str, seconds: float) -> dict[str, Any]:
    return {"started": str(tmp / f"{name}.started"), "marker": str(tmp / name), "seconds": seconds}


def in_flight(client: Client) -> int:
    """Tasks the tenant's replicas (only the marker agent's here) still run or queue."""
    total = 0
    for pool in client.health()["pools"].values():
        for replica in pool["replicas"]:
            health = replica_health(replica)
            total += health["in_flight"] + health["queued"]
    return total


def twin_lands(client: Client, tmp: Path, seconds: float) -> None:
    """Run an item with the same wait after the cancelled ones: once its marker is written,
    theirs would have been too."""
    done = client.workflows.run("one", {"items": [item(tmp, "twin", seconds)]}, timeout_s=60)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    assert (tmp / "twin").exists()


def test_cancelling_an_execution_stops_its_step_on_the_replica(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(marker_agent())
    client.workflows.define(fan("one", "all"))
    slow = item(tmp_path, "slow", 3)
    execution = client.workflows.run("one", {"items": [slow]}, wait=False)
    wait_until(Path(slow["started"]).exists, 60, "the step to start on its replica")
    cancelled = client.workflows.cancel(execution.id, by="test")
    assert cancelled.status == ExecutionStatus.CANCELLED
    wait_until(lambda: in_flight(client) == 0, 10, "the replica to drop the cancelled task")
    twin_lands(client, tmp_path, 3)
    assert not Path(slow["marker"]).exists()


def test_join_any_ends_at_the_first_item_and_the_others_never_land(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(marker_agent())
    client.workflows.define(fan("first", "any"))
    client.workflows.define(fan("one", "all"))
    items = [item(tmp_path, "fast", 0), item(tmp_path, "slow1", 3), item(tmp_path, "slow2", 3)]
    done = client.workflows.run("first", {"items": items}, timeout_s=60)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    assert done.steps["each"].output == [{"marker": items[0]["marker"]}, None, None]
    assert {done.steps[f"each[{i}]"].status for i in (1, 2)} == {StepStatus.CANCELLED}
    twin_lands(client, tmp_path, 3)
    assert not Path(items[1]["marker"]).exists() and not Path(items[2]["marker"]).exists()


def test_many_cancelled_executions_leave_a_one_slot_pool_usable(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(marker_agent(max_concurrency=1))
    client.workflows.define(fan("one", "all"))
    for i in range(120):  # more cancels than the pool has slots and queue places
        slow = item(tmp_path, f"slow{i}", 60)
        execution = client.workflows.run("one", {"items": [slow]}, wait=False)
        if i % 20 == 0:  # some of them are surely running on the replica when cancelled
            wait_until(Path(slow["started"]).exists, 60, "the step to start")
        client.workflows.cancel(execution.id, by="test")
    wait_until(lambda: in_flight(client) == 0, 20, "the replica to drop every cancelled task")
    twin_lands(client, tmp_path, 0)
