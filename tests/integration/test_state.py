"""Durable agent state: saved after each task, restored when the replica is replaced."""

from __future__ import annotations

import pytest
import ray

from actors.client import Client
from actors.models import AgentSpec
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def test_state_survives_a_killed_replica(client: Client) -> None:
    client.agents.apply(
        AgentSpec(
            name="tally", capabilities=["tally.add"], entrypoint="tests.fixtures.agents:Tally"
        )
    )
    for i in range(5):
        assert client.tasks.run("tally.add", {"amount": 2, "label": f"t{i}"}).output == 2 * (i + 1)
    (replica,) = client.health()["pools"]["tally@1.0.0"]["replicas"]
    ray.kill(ray.get_actor(replica, namespace="dafnck"), no_restart=True)
    wait_until(
        lambda: replica not in client.health()["pools"]["tally@1.0.0"]["replicas"],
        20,
        "a replacement",
    )
    result = client.tasks.run("tally.add", {"amount": 1, "label": "after"})
    assert result.ok and result.output == 11, result
    assert result.replica != replica
