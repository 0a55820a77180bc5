"""Pool autoscaling on real Ray: an idle pool scales to zero, and the first task after that
(from a caller, or a workflow step dispatched by the supervisor) waits for the replica its
arrival wakes."""

from __future__ import annotations

import time

import pytest

from actors.client import Client
from actors.messages import DomainEvent
from actors.models import AgentSpec
from workflows.spec import WorkflowSpec

SPEC = AgentSpec(
    name="sleepy",
    capabilities=["test.echo"],
    entrypoint="tests.fixtures.agents:echo",
    replicas={"min": 0, "max": 2},
    autoscaling={"idle_to_zero_s": 0.5, "downscale_delay_s": 0},
)


def _await_zero(client: Client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        pool = client.health()["pools"][SPEC.agent_id]
        if pool["running"] == pool["retiring"] == 0:
            return
        assert time.monotonic() < deadline, "the idle pool did not scale to zero"
        time.sleep(0.2)


@pytest.mark.timeout(150)
def test_an_idle_pool_goes_to_zero_and_the_next_task_or_step_wakes_it(client: Client) -> None:
    client.agents.apply(SPEC)
    _await_zero(client)

    woken = client.tasks.run("test.echo", {"text": "hi"}, timeout_s=60)
    assert woken.ok and woken.output["text"] == "hi"

    _await_zero(client)
    client.workflows.define(
        WorkflowSpec.model_validate(
            {
                "name": "wake",
                "steps": [{"id": "a", "uses": "test.echo", "with": {"text": "yo"}}],
                "outputs": {"text": "${{ steps.a.output.text }}"},
            }
        )
    )
    done = client.workflows.run("wake", {}, timeout_s=90)
    assert done.status.value == "succeeded" and done.outputs == {"text": "yo"}

    entries = client.store.redis.xrange(client.store.key("events", "agent.autoscaled"))
    reasons = [DomainEvent.from_fields(f).data["reason"] for _, f in entries]
    assert reasons[:4] == ["idle", "wake", "idle", "wake"]
