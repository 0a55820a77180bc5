"""Routing from the caller to a pool's replicas: spread, versions, discovery, refusals."""

from __future__ import annotations

import pytest

from actors.client import Client
from actors.models import AgentStatus
from cluster.errors import AgentNotFound, InputInvalid, QueueFull
from tests.integration.helpers import echo_spec, replica_health, slow_spec

pytestmark = pytest.mark.timeout(120)


def test_tasks_spread_over_a_pool_of_three(client: Client) -> None:
    client.agents.apply(echo_spec(replicas=3))
    calls = [client.tasks.submit("test.echo", {"text": str(i)}) for i in range(30)]
    results = [client.tasks.result(c) for c in calls]
    assert all(r.ok for r in results)
    assert [r.output["text"] for r in results] == [str(i) for i in range(30)]
    assert len({r.replica for r in results}) > 1
    assert len({r.output["pid"] for r in results}) > 1  # really different processes


def test_two_versions_side_by_side(client: Client) -> None:
    client.agents.apply([echo_spec("1.0.0", tags=["stable"]), echo_spec("2.0.0", tags=["beta"])])

    assert client.tasks.run("test.echo", {"text": "x"}).agent == "echo@2.0.0"
    assert client.tasks.run("test.echo", {"text": "x"}, agent="echo@>=2").agent == "echo@2.0.0"
    assert client.tasks.run("test.echo", {"text": "x"}, agent="echo@<2").agent == "echo@1.0.0"
    assert client.tasks.run("test.echo", {"text": "x"}, agent="echo@1.0.0").agent == "echo@1.0.0"

    assert [r.agent_id for r in client.agents.ls()] == ["echo@1.0.0", "echo@2.0.0"]
    assert [
        r.agent_id for r in client.agents.discover(capability="test.echo", version=">=1.0,<2")
    ] == ["echo@1.0.0"]
    assert [r.agent_id for r in client.agents.discover(tags=["beta"])] == ["echo@2.0.0"]
    assert client.agents.discover(capability="text.summarize") == []
    assert client.agents.get("echo@2.0.0").skills["test.echo"].method == "echo"


def test_disabling_the_newest_version_routes_to_the_older(client: Client) -> None:
    client.agents.apply([echo_spec("1.0.0"), echo_spec("2.0.0")])
    client.agents.set_status("echo@2.0.0", AgentStatus.DISABLED)
    assert client.tasks.run("test.echo", {"text": "x"}).agent == "echo@1.0.0"
    assert client.health()["pools"]["echo@2.0.0"]["running"] == 0


def test_unknown_capability_names_near_ones(client: Client) -> None:
    client.agents.apply(echo_spec())
    with pytest.raises(AgentNotFound) as caught:
        client.tasks.run("test.ecko", {"text": "x"})
    assert "did you mean 'test.echo'" in str(caught.value)


def test_bad_input_is_refused_before_reaching_a_replica(client: Client) -> None:
    (record,) = client.agents.apply(echo_spec())
    assert client.tasks.run("test.echo", {"text": "ok"}).ok
    (replica,) = client.health()["pools"][record.agent_id]["replicas"]
    before = replica_health(replica)

    with pytest.raises(InputInvalid) as caught:
        client.tasks.run("test.echo", {"txt": "typo", "times": "many"})
    problems = caught.value.problems
    assert any("'text' is a required property" in p for p in problems)
    assert any(p.startswith("times: ") for p in problems)
    assert any("txt" in p for p in problems)

    after = replica_health(replica)
    assert (
        (after["completed"], after["failed"]) == (before["completed"], before["failed"]) == (1, 0)
    )


def test_queue_full_when_the_pool_is_at_capacity(client: Client) -> None:
    client.agents.apply(slow_spec(max_concurrency=1, max_queued=0))
    first = client.tasks.submit("test.slow", {"seconds": 2})
    with pytest.raises(QueueFull) as caught:
        client.tasks.submit("test.slow", {"seconds": 2})
    assert caught.value.retryable
    assert "sleeper@1.0.0" in str(caught.value)
    assert client.tasks.result(first).ok
    # the slot is free again once the first task is done
    assert client.tasks.run("test.slow", {"seconds": 0.01}).ok
