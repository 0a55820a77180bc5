"""Version pinning on a real cluster: an agent upgraded while an execution runs does not
change the version that execution's later steps use; a new execution takes the new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.client import Client
from actors.models import AgentSpec
from tests.integration.helpers import replica_health, wait_until
from workflows.execution import ExecutionStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(240)


def stepper(version: str) -> AgentSpec:
    return AgentSpec(
        name="stepper",
        version=version,
        capabilities=["test.step"],
        entrypoint="tests.fixtures.agents:step",
        replicas={"min": 1, "max": 1},
    )


def completed(client: Client, agent_id: str) -> int:
    replicas = client.health()["pools"][agent_id]["replicas"]
    return sum(replica_health(r)["completed"] for r in replicas)


CHAIN = WorkflowSpec.model_validate({"name": "pinned", "steps": [
    {"id": "s0", "uses": "test.step", "with": {"value": 1, "seconds": 3}},
    {"id": "s1", "uses": "test.step", "with": {"value": "${{ steps.s0.output }}"}},
    {"id": "s2", "uses": "test.step", "with": {"value": "${{ steps.s1.output }}"}},
]})  # fmt: skip


def test_an_agent_upgraded_mid_execution_keeps_its_later_steps_on_the_old_version(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(stepper("1.0.0"))
    client.workflows.define(CHAIN)
    execution = client.workflows.run("pinned", wait=False)
    wait_until(lambda: client.workflows.status(execution.id).pins, 30, "the execution to pin")
    client.agents.apply(stepper("2.0.0"))  # the upgrade lands while s0 runs
    done = client.workflows.wait(execution.id, 120)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    assert done.pins == {"test.step": "stepper@1.0.0"}
    assert completed(client, "stepper@1.0.0") == 3
    assert completed(client, "stepper@2.0.0") == 0
    later = client.workflows.run("pinned", timeout_s=120)
    assert later.status == ExecutionStatus.SUCCEEDED and later.pins == {
        "test.step": "stepper@2.0.0"
    }
    assert completed(client, "stepper@2.0.0") == 3
