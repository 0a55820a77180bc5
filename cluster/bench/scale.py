"""`dafnck bench --suite scale`: how throughput grows with a pool's replicas, and how fast
the pool autoscaler grows a pool under a burst.

The tasks wait 20 ms on "I/O" (`asyncio.sleep`) and each replica runs 4 at once, so one
replica tops out near 200 tasks/s whatever the machine: the figures measure orchestration
(routing, the supervisor, Ray's actor calls), not this machine's two CPUs. Throughput is
measured at 1..8 replicas with every replica's slots kept full; its ratio is over one
replica's. The burst figure is the seconds from the first task of a burst to the pool at
its maximum with every replica answering, under the autoscaling policy below.
"""

from __future__ import annotations

import time
from typing import Any

from actors.client import Client
from actors.models import AgentSpec
from cluster.bench.common import Result, result, throughput
from cluster.errors import ClusterUnavailable, TaskFailed

CAPABILITY = "bench.io"
SLOTS = 4  # tasks one replica runs at once
IO_MS = 20.0
_ROUTER_TTL_S = 2.1  # a caller's pool view is refreshed this often


def io_spec(name: str, high: int, autoscaling: dict[str, Any] | None = None) -> AgentSpec:
    """A pool of `wait_io` replicas (1..high), with an autoscaling policy when given."""
    return AgentSpec(
        name=name,
        description="dafnck bench: waits 20 ms on I/O",
        capabilities=[CAPABILITY],
        entrypoint="actors.examples.bench_agents:wait_io",
        replicas={"min": 1, "max": high},
        max_concurrency=SLOTS,
        max_queued=10_000,
        autoscaling=autoscaling,
    )


def run_scale_suite(client: Client, quick: bool) -> list[Result]:
    """pool_throughput_1..8 (tasks/s; ratio over 1 replica) and burst_scale_up_s."""
    sizes = (1, 2) if quick else tuple(range(1, 9))
    calls_per_slot = 6 if quick else 25
    rows = _throughput_rows(client, sizes, calls_per_slot)
    rows.append(_burst(client, high=sizes[-1], quick=quick))
    return rows


def _throughput_rows(client: Client, sizes: tuple[int, ...], calls_per_slot: int) -> list[Result]:
    spec = io_spec("bench-io", high=sizes[-1])
    client.agents.apply(spec)
    tasks = client.tasks
    agent = f"{spec.name}@{spec.version}"

    def submit(i: int) -> Any:
        return tasks.router.submit(tasks.task(CAPABILITY, {"ms": IO_MS}, agent=agent))

    def wait(call: Any) -> None:
        done = tasks.router.result(call)
        if not done.ok:
            raise TaskFailed(f"bench task failed: {done.error}")

    rows: list[Result] = []
    single: float | None = None
    try:
        for size in sizes:
            client.agents.scale(agent, size)
            _await_ready(client, spec.agent_id, size, timeout_s=120)
            time.sleep(_ROUTER_TTL_S)  # so the router sees every replica
            window = size * SLOTS
            throughput(submit, wait, window * 2, window)  # warm the new replicas
            value = throughput(submit, wait, window * calls_per_slot, window)
            single = single or value
            rows.append(result("scale", f"pool_throughput_{size}", value, "tasks/s", single))
    finally:
        client.agents.rm(agent)
    return rows


def _burst(client: Client, high: int, quick: bool) -> Result:
    """Seconds for an autoscaled pool to reach `high` ready replicas under a burst."""
    policy = {"target_inflight_per_replica": 2, "upscale_delay_s": 0, "downscale_delay_s": 60}
    spec = io_spec("bench-burst", high=high, autoscaling=policy)
    client.agents.apply(spec)
    _await_ready(client, spec.agent_id, 1, timeout_s=120)
    tasks = client.tasks
    agent = f"{spec.name}@{spec.version}"
    pending: list[Any] = []
    started = time.perf_counter()
    try:
        deadline = time.monotonic() + 120
        while not _ready(client, spec.agent_id, high):
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"the burst pool did not reach {high} replicas in 120 s")
            while len(pending) < high * SLOTS * 2:  # more than the pool runs: it must grow
                pending.append(tasks.submit(CAPABILITY, {"ms": IO_MS * 5}, agent=agent))
            tasks.result(pending.pop(0))
        elapsed = time.perf_counter() - started
        for call in pending:
            tasks.result(call)
    finally:
        client.agents.rm(agent)
    return result("scale", "burst_scale_up_s", elapsed, "s", None)


def _ready(client: Client, agent_id: str, replicas: int) -> bool:
    """Whether the pool has `replicas` replicas and each has answered a probe."""
    pool = client.health()["pools"].get(agent_id, {})
    reports = pool.get("replicas", {}).values()
    return len(reports) >= replicas and all("pid" in r for r in reports)


def _await_ready(client: Client, agent_id: str, replicas: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _ready(client, agent_id, replicas):
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"{agent_id} did not reach {replicas} ready replicas")
        time.sleep(0.05)
