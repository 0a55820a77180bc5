"""A durable timer and a signal wait on a real cluster, each across a supervisor kill: the
restarted supervisor waits for the same wake-up time and takes the signal sent after it."""

from __future__ import annotations

import time

import pytest
import ray

from actors.client import Client
from actors.models import AgentSpec
from actors.names import supervisor_name
from cluster.settings import RAY_NAMESPACE
from tests.integration.helpers import wait_until
from workflows.execution import ExecutionStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(240)

WAITS = WorkflowSpec.model_validate({"name": "waits", "steps": [
    {"id": "nap", "sleep": {"seconds": 6}},
    {"id": "hold", "wait": {"signal": "go", "timeout_s": 600}},
    {"id": "after", "uses": "test.step", "needs": ["nap"],
     "with": {"value": "${{ steps.hold.output.value }}"}},
]})  # fmt: skip


def kinds(client: Client, execution_id: str) -> list[str]:
    return [e.type for _, e in client.workflows.events(execution_id)]


@pytest.mark.chaos
def test_a_timer_and_a_signal_survive_a_supervisor_kill(client: Client) -> None:
    client.agents.apply(
        AgentSpec(name="stepper", capabilities=["test.step"],
                  entrypoint="tests.fixtures.agents:step", replicas={"min": 1, "max": 1})
    )  # fmt: skip
    client.workflows.define(WAITS)
    execution = client.workflows.run("waits", wait=False)
    wait_until(
        lambda: {"step.sleeping", "step.waiting_signal"} <= set(kinds(client, execution.id)),
        60,
        "the timer and the wait to be stored",
    )
    (until,) = [
        e.data["until"] for _, e in client.workflows.events(execution.id)
        if e.type == "step.sleeping"
    ]  # fmt: skip
    killed_at = time.time()
    supervisor = ray.get_actor(supervisor_name(client.settings.tenant), namespace=RAY_NAMESPACE)
    ray.kill(supervisor, no_restart=False)
    wait_until(
        lambda: any(
            e.type == "execution.recovered" and e.at >= killed_at
            for _, e in client.workflows.events(execution.id)
        ),
        90,
        "the restarted supervisor to resume the execution",
    )
    client.workflows.signal(execution.id, "go", {"value": 7})
    done = client.workflows.wait(execution.id, 120)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    assert done.steps["nap"].output == {"slept_until": until}  # the same timer
    assert done.steps["hold"].output == {"value": 7}
    assert done.steps["after"].output == 8  # test.step adds one
