"""`dafnck bench --suite workflows`: the durable engine against the same DAG as raw Ray tasks.

A 1,000-step chain and a 1,000-step fan-out/fan-in run through the engine (every state
change written to Redis) and as plain Ray tasks passing ObjectRefs; the chain's time
difference per step is the engine's overhead. Then the supervisor is killed in the middle
of a chain and the time to the first step dispatched again is measured.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from actors.client import Client
from actors.models import AgentSpec
from actors.names import supervisor_name
from cluster.bench.common import result
from cluster.settings import RAY_NAMESPACE
from workflows.execution import ExecutionStatus
from workflows.spec import WorkflowSpec

CAPABILITY = "bench.step"


@ray.remote
def _raw_step(n: int = 0, *_needs: Any) -> int:
    return n + 1


def _agent() -> AgentSpec:
    return AgentSpec(
        name="bench-step",
        capabilities=[CAPABILITY],
        entrypoint="actors.examples.bench_agents:step",
        replicas={"min": 2, "max": 2},
        max_concurrency=256,
        max_queued=10_000,
    )


def chain_spec(length: int, name: str = "bench-chain", seconds: float = 0.0) -> WorkflowSpec:
    steps: list[dict[str, Any]] = [{"id": "s0", "uses": CAPABILITY, "with": {"n": 0}}]
    steps += [
        {"id": f"s{i}", "uses": CAPABILITY, "with": {"n": f"${{{{ steps.s{i - 1}.output }}}}"}}
        for i in range(1, length)
    ]
    return WorkflowSpec.model_validate(
        {"name": name, "steps": steps, "outputs": {"n": f"${{{{ steps.s{length - 1}.output }}}}"}}
    )


def fan_spec(width: int) -> WorkflowSpec:
    middle = [
        {"id": f"m{i}", "uses": CAPABILITY, "with": {"n": "${{ steps.src.output }}"}}
        for i in range(width)
    ]
    steps = [
        {"id": "src", "uses": CAPABILITY, "with": {"n": 0}},
        *middle,
        {"id": "sink", "uses": CAPABILITY, "needs": [m["id"] for m in middle], "with": {"n": 0}},
    ]
    return WorkflowSpec.model_validate({"name": "bench-fan", "steps": steps})


def _raw_chain(length: int) -> float:
    started = time.perf_counter()
    ref = _raw_step.remote(0)
    for _ in range(length - 1):
        ref = _raw_step.remote(ref)
    assert ray.get(ref) == length
    return time.perf_counter() - started


def _raw_fan(width: int) -> float:
    started = time.perf_counter()
    src = _raw_step.remote(0)
    middle = [_raw_step.remote(src) for _ in range(width)]
    ray.get(_raw_step.remote(0, *middle))
    return time.perf_counter() - started


def _engine(client: Client, name: str) -> float:
    started = time.perf_counter()
    done = client.workflows.run(name, timeout_s=600)
    elapsed = time.perf_counter() - started
    if done.status != ExecutionStatus.SUCCEEDED:
        raise RuntimeError(f"bench workflow {name} {done.status.value}: {done.error}")
    return elapsed


def _recovery(client: Client, length: int) -> float:
    """Seconds from killing the supervisor mid-chain to its first step dispatched again."""
    client.workflows.define(chain_spec(length, "bench-recovery"))
    execution = client.workflows.run("bench-recovery", wait=False)
    while (
        sum(1 for _, e in client.workflows.events(execution.id) if e.type == "step.succeeded")
        < length // 4
    ):
        time.sleep(0.01)
    supervisor = ray.get_actor(supervisor_name(client.settings.tenant), namespace=RAY_NAMESPACE)
    killed_at = time.time()
    ray.kill(supervisor, no_restart=False)
    cursor, recovered = "0-0", False
    while True:
        for event_id, event in client.workflows.events(execution.id, cursor, block_ms=200):
            cursor = event_id
            recovered = recovered or (event.type == "execution.recovered" and event.at >= killed_at)
            if recovered and event.type == "step.started":
                client.workflows.wait(execution.id, 600)
                return event.at - killed_at
        if time.time() - killed_at > 120:
            raise RuntimeError("the supervisor did not resume the execution within 120 s")


def run_workflows_suite(client: Client, quick: bool) -> list[dict[str, Any]]:
    """The `workflows` suite's results, in the bench's shape."""
    size = 100 if quick else 1000
    client.agents.apply(_agent())
    client.workflows.define(chain_spec(size))
    client.workflows.define(fan_spec(size - 2))
    _raw_fan(size - 2), _raw_chain(20)  # warm Ray's worker pool and the replicas
    client.tasks.run(CAPABILITY, {"n": 0})
    raw_fan, engine_fan = _raw_fan(size - 2), _engine(client, "bench-fan")
    raw_chain, engine_chain = _raw_chain(size), _engine(client, "bench-chain")
    overhead_ms = (engine_chain - raw_chain) / size * 1000
    recovery = _recovery(client, 40 if quick else 200)
    return [
        result("workflows", f"dag_fanout_{size}", engine_fan, "s", raw_fan),
        result("workflows", f"dag_chain_{size}", engine_chain, "s", raw_chain),
        result("workflows", "chain_step_overhead_ms", overhead_ms, "ms", None),
        result("workflows", "recovery_s", recovery, "s", None),
    ]
