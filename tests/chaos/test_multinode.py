"""Several nodes: a head and two worker nodes (`ray.cluster_utils.Cluster`) on this machine.

A pool whose replicas need the workers' custom resource and select their node label
spreads over both workers; one
worker is then removed without warning while 40 tasks and a fan-out workflow run. The pool
comes back at full size on the surviving worker, every task completes (its side effect
recorded once in Redis, keyed by the task), and the workflow succeeds.

The cluster is this test's own, so the scenario runs in a subprocess, away from the
session's Ray (`tests/conftest.py`), and prints what it saw as JSON for the assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
TASKS = 40
ITEMS = 8
#: Detect a lost node within about a second instead of Ray's default of ~15 s.
FAST_FAILURE = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}
SMALL_STORE = 100 * 1024 * 1024


def test_a_worker_node_lost_mid_run_loses_no_task_and_the_pool_comes_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from tests.chaos.test_multinode import scenario; scenario()"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    workers, removed = seen["workers"], seen["removed"]
    survivor = next(w for w in workers if w != removed)
    assert sorted(set(seen["before"])) == sorted(workers), (
        "replicas did not spread over both workers"
    )
    assert seen["after"] == [survivor] * 4, "the pool did not come back on the surviving worker"
    assert seen["results"] == ["succeeded"] * TASKS
    assert seen["retried"] > 0, "the node was removed with none of the tasks on it"
    expected = {f"t-{i}" for i in range(TASKS)} | {f"wf-{i}" for i in range(ITEMS)}
    assert set(seen["done"]) == expected  # every task's side effect, once per key (HSETNX)
    assert all(n >= 1 for n in seen["runs"].values())
    assert seen["workflow"] == "succeeded"


def scenario() -> None:
    """Run in a subprocess: start the cluster, run the scenario, print what was seen."""
    import ray
    from ray.cluster_utils import Cluster

    from cluster.settings import RAY_NAMESPACE
    from cluster.valkey import free_port, start_server

    state = Path(tempfile.mkdtemp(prefix="dkmn"))
    port = free_port()
    valkey = start_server(state / "valkey", port)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": SMALL_STORE,
                        "include_dashboard": False, "_system_config": FAST_FAILURE},
    )  # fmt: skip
    workers = [
        cluster.add_node(
            num_cpus=1,
            resources={"worker": 4},
            object_store_memory=SMALL_STORE,
            labels={"dafnck.io/pool": "cpu"},
        )
        for _ in range(2)
    ]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # fmt: skip
    try:
        seen = _run(cluster, workers, f"redis://127.0.0.1:{port}/0", state)
    finally:
        ray.shutdown()
        cluster.shutdown()
        valkey.terminate()
        valkey.wait(10)
    print(json.dumps(seen))


def _run(cluster: Any, workers: list[Any], url: str, state: Path) -> dict[str, Any]:
    import redis

    from actors.client import connect
    from actors.models import AgentSpec
    from cluster.settings import load_settings

    settings = load_settings(redis_url=url, state_dir=str(state), tenant="mn",
                             reconcile_interval_s=0.5)  # fmt: skip
    client = connect(settings=settings)
    spec = AgentSpec(
        name="recorder", capabilities=["chaos.record"],
        entrypoint="tests.fixtures.scale_agents:record", replicas={"min": 4, "max": 4},
        max_concurrency=8, timeout_s=60,
        resources={"custom": {"worker": 1}, "node_labels": {"dafnck.io/pool": "cpu"}},
        retry={"max_attempts": 5, "backoff_s": 0.2},
    )  # fmt: skip
    client.agents.apply(spec)
    before = _replica_nodes(client, spec.agent_id, 4)
    client.workflows.define(_workflow())
    keys = [f"wf-{i}" for i in range(ITEMS)]
    execution = client.workflows.run("fan", {"keys": keys, "url": url}, wait=False)
    calls = [
        client.tasks.submit("chaos.record", {"key": f"t-{i}", "redis_url": url, "seconds": 1.0})
        for i in range(TASKS)
    ]
    time.sleep(0.5)  # tasks and workflow items are running on both workers
    victim = max(workers, key=lambda w: before.count(w.node_id))
    cluster.remove_node(victim, allow_graceful=False)
    results = [client.tasks.result(c) for c in calls]
    finished = client.workflows.wait(execution.id, 120)
    after = _replica_nodes(client, spec.agent_id, 4)
    store = redis.Redis.from_url(url, decode_responses=True)
    return {
        "workers": [w.node_id for w in workers],
        "removed": victim.node_id,
        "before": before,
        "after": after,
        "results": [r.status for r in results],
        "retried": sum(1 for r in results if r.attempts > 1),
        "done": sorted(store.hkeys("chaos:done")),
        "runs": {k: int(v) for k, v in store.hgetall("chaos:runs").items()},
        "workflow": finished.status.value,
    }


def _workflow() -> Any:
    from workflows.spec import WorkflowSpec

    return WorkflowSpec.model_validate({
        "name": "fan",
        "inputs": {"keys": {"type": "array"}, "url": {"type": "string"}},
        "steps": [{
            "id": "each", "uses": "chaos.record",
            "for_each": {"items": "inputs.keys", "max_parallel": ITEMS},
            "with": {"key": "${{ item }}", "redis_url": "${{ inputs.url }}", "seconds": 1.5},
        }],
    })  # fmt: skip


def _replica_nodes(client: Any, agent_id: str, replicas: int, timeout_s: float = 90) -> list[str]:
    """The node of each live replica, once the pool has `replicas` replicas answering."""
    import ray

    from actors.launcher import RayLauncher

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pool = client.health()["pools"][agent_id]
        reports = list(pool["replicas"].values())
        if len(reports) == replicas and all("pid" in r for r in reports):
            handles = RayLauncher().find(f"{client.settings.tenant}/{agent_id}/")
            nodes = [
                ray._private.state.actors(actor_id=h._actor_id.hex())["Address"]["NodeID"]
                for name, h in handles.items()
                if name in pool["replicas"]
            ]
            if len(nodes) == replicas:
                return sorted(nodes)
        time.sleep(0.2)
    raise AssertionError(f"{agent_id} did not reach {replicas} live replicas in {timeout_s}s")
