"""Recovery: a replica dying under a task, and the supervisor itself being killed."""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray

from actors.client import Client
from cluster.settings import RAY_NAMESPACE
from tests.integration.helpers import echo_spec, replica_health, slow_spec, wait_until

pytestmark = pytest.mark.timeout(150)


def pool_of(client: Client, agent_id: str) -> dict[str, Any]:
    return dict(client.health()["pools"][agent_id])


def test_task_survives_its_replica_being_killed(client: Client) -> None:
    (record,) = client.agents.apply(slow_spec(replicas=2))
    wait_until(lambda: pool_of(client, record.agent_id)["running"] == 2, 30, "two replicas running")

    pending = client.tasks.submit("test.slow", {"seconds": 2})
    victim = pending.replica
    time.sleep(0.5)  # the task is running on the victim now
    ray.kill(ray.get_actor(victim, namespace=RAY_NAMESPACE), no_restart=True)

    result = client.tasks.result(pending)
    assert result.ok, result.error
    assert result.attempts == 2
    assert result.replica != victim

    def replaced() -> dict[str, Any] | None:
        pool = pool_of(client, record.agent_id)
        ok = pool["running"] == 2 and victim not in pool["replicas"] and pool["restarts"] >= 1
        return pool if ok else None

    pool = wait_until(replaced, 10, "the pool back at two replicas")
    assert pool["restarts"] == 1
    assert client.tasks.run("test.slow", {"seconds": 0.01}).ok


def test_single_replica_is_replaced_after_it_is_killed(client: Client) -> None:
    (record,) = client.agents.apply(echo_spec())
    (victim,) = pool_of(client, record.agent_id)["replicas"]
    ray.kill(ray.get_actor(victim, namespace=RAY_NAMESPACE), no_restart=True)

    def replaced() -> bool:
        pool = pool_of(client, record.agent_id)
        return (
            pool["running"] == 1
            and pool["restarts"] == 1
            and bool(next(iter(pool["replicas"].values())))
        )

    wait_until(replaced, 15, "a replacement replica up and probed")
    result = client.tasks.run("test.echo", {"text": "again"})
    assert result.ok and result.output["text"] == "again"


def test_supervisor_comes_back_with_its_pools(client: Client) -> None:
    (record,) = client.agents.apply(echo_spec())
    first = client.tasks.run("test.echo", {"text": "before"})
    assert first.ok
    pid_before = replica_health(first.replica)["pid"]

    ray.kill(client.supervisor, no_restart=False)  # Ray restarts it: max_restarts=-1

    def pool_back() -> dict[str, Any] | None:
        pools = client.health()["pools"]
        pool = pools.get(record.agent_id)
        return pool if pool and pool["running"] == 1 else None

    pool = wait_until(pool_back, 60, "the supervisor back with its pool")
    assert list(pool["replicas"]) == [first.replica]  # adopted, not started again
    assert replica_health(first.replica)["pid"] == pid_before

    after = client.tasks.run("test.echo", {"text": "after"})
    assert after.ok and after.output["text"] == "after"
    assert after.replica == first.replica
    # and it still takes new work (asked for by version: this client's cached view of the
    # unversioned pool may still be the one it fetched a moment ago)
    client.agents.apply(echo_spec("2.0.0"))
    assert client.tasks.run("test.echo", {"text": "v2"}, agent="echo@>=2").agent == "echo@2.0.0"


def test_task_survives_the_only_replica_being_killed(client: Client) -> None:
    client.agents.apply(slow_spec())
    pending = client.tasks.submit("test.slow", {"seconds": 2})
    victim = pending.replica
    time.sleep(0.5)
    ray.kill(ray.get_actor(victim, namespace=RAY_NAMESPACE), no_restart=True)

    result = client.tasks.result(pending)
    assert result.ok, result.error
    assert result.attempts >= 2
    assert result.replica != victim
