"""Pool autoscaling grows the Ray cluster and lets it shrink again, on fake nodes.

A head with Ray's autoscaler and the fake multi-node provider (what
`ray.cluster_utils.AutoscalingCluster` sets up; started here by hand, because that class
runs `ray stop --force`, which would stop every Ray on the machine, and the config file it
reads is not in the wheel). Worker nodes offer two `agent_slot`s each; the head none.
Load on an autoscaled pool grows it past what the cluster has: its replicas wait for
resources, the supervisor asks the autoscaler for them, and nodes are added until the pool
runs at its maximum. When the load stops, the pool shrinks, the request shrinks with it,
and the idle node goes away.

Runs in a subprocess (its own Ray, not the session's) and prints what it saw as JSON.
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
WORKER = {"resources": {"CPU": 1, "agent_slot": 2}, "node_config": {}, "min_workers": 0,
          "max_workers": 2}  # fmt: skip


def test_an_autoscaled_pool_adds_nodes_under_load_and_idle_nodes_go() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # as `dafnck up` runs its head
    done = subprocess.run(
        [sys.executable, "-c",
         "from tests.chaos.test_autoscaling_cluster import scenario; scenario()"],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["nodes_at_start"] == 1  # the head alone: no room for any replica
    assert seen["peak_replicas"] == 4 and seen["nodes_at_peak"] == 3
    assert seen["results"] == ["succeeded"] * seen["tasks"], [
        r for r in seen["results"] if r != "succeeded"
    ]
    scaled = [(e["from"], e["to"]) for e in seen["autoscaled"]]
    assert (1, 2) in scaled or (1, 3) in scaled or (1, 4) in scaled, scaled
    assert scaled[-1][1] == 1  # back to the minimum once the load stopped
    assert seen["nodes_at_end"] == 2  # head + the worker holding the last replica


def fake_cluster_config(gcs_address: str) -> dict[str, Any]:
    """The fake multi-node provider's config (Ray's fake_multi_node/example.yaml)."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
            "disable_launch_config_check": True, "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.agents": WORKER,
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.05, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }  # fmt: skip


def scenario() -> None:
    """In a subprocess: start the fake autoscaling cluster, run the load, print what happened."""
    import ray

    from cluster.ray_runtime import stop_head
    from cluster.settings import RAY_NAMESPACE, load_settings
    from cluster.valkey import free_port, start_server

    state = Path(tempfile.mkdtemp(prefix="dkas"))
    port, valkey_port = free_port(), free_port()
    valkey = start_server(state / "valkey", valkey_port)
    settings = load_settings(redis_url=f"redis://127.0.0.1:{valkey_port}/0",
                             state_dir=str(state), tenant="as", reconcile_interval_s=0.5)  # fmt: skip
    address = f"{ray.util.get_node_ip_address()}:{port}"
    config = state / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config(address)))
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray_cli, "get-auth-token", "--generate"], capture_output=True, check=False)
    subprocess.run(
        [*ray_cli, "start", "--head", "--port", str(port),
         "--temp-dir", str(state / "ray"), "--num-cpus", "0", "--include-dashboard", "false",
         f"--autoscaling-config={config}", "--disable-usage-stats"],
        env={**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # fmt: skip
        seen = _run(settings)
    finally:
        ray.shutdown()
        stop_head(
            settings, timeout_s=5
        )  # every process of this cluster: its paths are under `state`
        valkey.terminate()
        valkey.wait(10)
    print(json.dumps(seen))


def _outcome(result: Any) -> str:
    return str(result.status) if result.ok else f"{result.error.type}: {result.error.message}"


def _alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


def _run(settings: Any) -> dict[str, Any]:
    import ray

    from actors.client import connect
    from actors.messages import DomainEvent
    from actors.models import AgentSpec

    client = connect(settings=settings)
    nodes_at_start = _alive_nodes()
    spec = AgentSpec(
        name="grower", capabilities=["test.slow"], entrypoint="tests.fixtures.agents:slow",
        replicas={"min": 1, "max": 4}, max_concurrency=2, resources={"custom": {"agent_slot": 1}},
        autoscaling={"target_inflight_per_replica": 1, "downscale_delay_s": 2},
    )  # fmt: skip
    client.agents.apply(spec)  # its first replica waits for the first worker node
    active: list[Any] = []
    finished: list[Any] = []
    peak = nodes_at_peak = 0
    deadline = time.monotonic() + 150
    while peak < 4 and time.monotonic() < deadline:
        done, _ = ray.wait([c.ref for c in active], num_returns=len(active), timeout=0)
        finished += [c for c in active if c.ref in set(done)]
        active = [c for c in active if c.ref not in set(done)]
        while len(active) < 8:  # keep the load up: more than one replica runs
            active.append(client.tasks.submit("test.slow", {"seconds": 1.0}))
        time.sleep(0.5)
        pool = client.health()["pools"][spec.agent_id]
        ready = sum(1 for r in pool["replicas"].values() if "pid" in r)
        if ready > peak:
            peak, nodes_at_peak = ready, _alive_nodes()
    calls = finished + active
    results = [_outcome(client.tasks.result(c)) for c in calls]
    end = time.monotonic() + 90
    while _alive_nodes() > 2 and time.monotonic() < end:
        time.sleep(1)
    events = client.store.redis.xrange(client.store.key("events", "agent.autoscaled"))
    return {
        "nodes_at_start": nodes_at_start, "peak_replicas": peak, "nodes_at_peak": nodes_at_peak,
        "tasks": len(calls), "results": results, "nodes_at_end": _alive_nodes(),
        "autoscaled": [DomainEvent.from_fields(f).data for _, f in events],
    }  # fmt: skip
