"""Retries on a real cluster: a task whose replica died is sent again at once by the
router, whether or not anyone reads it, and only the tasks that had started on the dead
replica pay an attempt for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from actors.client import Client
from actors.models import AgentSpec
from cluster.settings import RAY_NAMESPACE
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(150)


def test_tasks_on_a_killed_replica_run_again_before_anyone_reads_them(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(
        AgentSpec(
            name="marker",
            capabilities=["test.marker"],
            entrypoint="tests.fixtures.cancellable:write_later",
            replicas={"min": 2, "max": 2},
            max_concurrency=1,
            max_queued=5,
        )
    )
    calls = [
        client.tasks.submit(
            "test.marker",
            # the first runs long enough to be still running when its replica is killed
            {
                "started": str(tmp_path / f"s{i}"),
                "marker": str(tmp_path / f"m{i}"),
                "seconds": 10 if i == 0 else 1,
            },
        )
        for i in range(6)
    ]
    victim = calls[0].replica
    on_victim = [c for c in calls if c.replica == victim]
    assert len(on_victim) == 3  # two replicas, in-flight counts compared: three each
    wait_until((tmp_path / "s0").exists, 30, "the first task to start on its replica")
    ray.kill(ray.get_actor(victim, namespace=RAY_NAMESPACE), no_restart=True)

    # Nobody reads a result yet: every side effect still lands, the victim's tasks elsewhere.
    wait_until(lambda: all((tmp_path / f"m{i}").exists() for i in range(6)), 60, "all six markers")
    results = [client.tasks.result(c) for c in calls]
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(r.replica != victim for r in results)
    # One slot on the victim: the task running there pays an attempt, the two queued do not.
    assert [r.attempts for r in results] == [2, 1, 1, 1, 1, 1]
