"""`dafnck bench`: the platform measured against raw Ray, in one process and one Ray session.

Each figure is ours next to raw Ray doing the same work on the same machine in the same
run, because figures on a shared, noisy machine move by half between runs: only the
ratio means something. Raw and routed rounds alternate (ABBA) and each side reports the
median of its rounds, so drift hits both sides alike. Without a Ray session in the
process, the bench starts a private local one (no `dafnck up` needed) and stops it after;
it runs under a throwaway tenant `bench-<hex>` whose actors and keys it removes.

The replicas run `actors.examples.bench_agents`, a module that imports nothing, so their
start time and memory are the platform's own; `rich` is imported only where the table is
drawn.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
import ray
from ray.exceptions import RayError

from actors.client import Client, connect
from actors.launcher import RayLauncher
from actors.models import AgentSpec, TaskResult
from actors.names import supervisor_name
from cluster.bench.common import (
    CAPABILITY,
    CONCURRENCY,
    Result,
    bench_spec,
    raw_actor_class,
    result,
    throughput,
)
from cluster.errors import ConfigError, DafnckError, ReplicaDied, TaskFailed
from cluster.settings import RAY_NAMESPACE, Settings

if TYPE_CHECKING:
    from rich.table import Table

#: A suite gets a connected client (its own tenant) and the quick flag; returns its results.
Suite = Callable[[Client, bool], list[Result]]

WINDOWS = (1, 4, 16)
#: The issues' targets: metric -> (the field judged, comparison, bound); shown in the table.
TARGETS: dict[str, tuple[str, str, float]] = {
    "routed_sync_rtt": ("ratio", "<=", 1.3),
    **{f"routed_pipelined_{k}": ("ratio", ">=", 0.7) for k in WINDOWS},
    "dag_fanout_1000": ("ratio", "<=", 3.0),
    "chain_step_overhead_ms": ("value", "<=", 5.0),
    "recovery_s": ("value", "<=", 10.0),
    "hub_throughput": ("ratio", ">=", 0.5),
    "cache_l1_hit_us": ("value", "<=", 5.0),
    "api_noop_rps": ("ratio", ">=", 0.5),
    "api_noop_p99_ms": ("ratio", "<=", 3.0),
}


@dataclass(frozen=True)
class Plan:
    """How much to measure: rounds per side and calls per round."""

    rounds: int
    calls: int
    sync_calls: int
    warmup: int
    starts: int


FULL = Plan(rounds=9, calls=500, sync_calls=150, warmup=400, starts=5)
QUICK = Plan(rounds=2, calls=120, sync_calls=40, warmup=40, starts=1)


# -- the report ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def run_bench(
    settings: Settings, suites: list[str] | None = None, quick: bool = False
) -> dict[str, Any]:
    """Run the named suites (default: all) and return `{"machine": ..., "results": [...]}`.

    Raises:
        ConfigError: a suite name is unknown.
        ClusterUnavailable, StoreUnavailable: Ray or the store cannot be reached.
    """
    names = list(suites or SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ConfigError(
            f"unknown bench suite {', '.join(map(repr, unknown))}; known: {', '.join(SUITES)}"
        )
    machine = machine_info()  # before the bench loads the machine: `load_1m` is the others'
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    results: list[Result] = []
    with _ray_session():
        client = connect(settings=settings.model_copy(update={"tenant": tenant}))
        try:
            for name in names:
                results += SUITES[name](client, quick)
        finally:
            _remove_tenant(client)
    return {"machine": machine, "results": results}


@contextlib.contextmanager
def _ray_session() -> Iterator[None]:
    """This process's Ray if it has one, else a private local Ray stopped at the end."""
    if ray.is_initialized():
        yield
        return
    ray.init(
        address="local",
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        namespace=RAY_NAMESPACE,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def _remove_tenant(client: Client) -> None:
    """Stop the bench tenant's pools, supervisor and replicas, and delete its keys."""
    tenant = client.settings.tenant
    with contextlib.suppress(DafnckError, RayError):
        for record in client.agents.ls():
            client.agents.rm(record.agent_id)
    # The supervisor goes first, so its reconcile loop cannot replace what is killed next.
    for prefix in (supervisor_name(tenant), f"{tenant}/"):
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == RAY_NAMESPACE and entry["name"].startswith(prefix):
                with contextlib.suppress(ValueError):
                    ray.kill(ray.get_actor(entry["name"], namespace=RAY_NAMESPACE), no_restart=True)
    keys = list(client.store.redis.scan_iter(match=client.store.key("*")))
    if keys:
        client.store.redis.delete(*keys)
    client.store.close()


# -- measuring -----------------------------------------------------------------------------


def paired(rounds: int, ours: Callable[[], float], raw: Callable[[], float]) -> tuple[float, float]:
    """Median of each side over `rounds` rounds, alternating which side goes first."""
    mine: list[float] = []
    theirs: list[float] = []
    for i in range(rounds):
        order = [(mine, ours), (theirs, raw)] if i % 2 == 0 else [(theirs, raw), (mine, ours)]
        for out, measure in order:
            out.append(measure())
    return statistics.median(mine), statistics.median(theirs)


def latency_ms(submit: Callable[[int], Any], wait: Callable[[Any], Any], calls: int) -> float:
    """Median milliseconds of one call sent and waited for, one at a time."""
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        wait(submit(i))
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def uss_mb(pid: int) -> float | None:
    """Memory only this process holds (MiB); None when the pid is not on this machine."""
    try:
        return float(psutil.Process(pid).memory_full_info().uss) / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _await_exit(pid: int, timeout_s: float = 10.0) -> None:
    """Let a killed actor's process go, so its teardown does not slow the next start."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        psutil.Process(pid).wait(timeout_s)


# -- the tasks suite -----------------------------------------------------------------------


@dataclass
class Sides:
    """The same no-op call made through our router and on a raw Ray actor."""

    client: Client
    raw: Any

    def submit_ours(self, i: int) -> Any:
        tasks = self.client.tasks
        return tasks.router.submit(tasks.task(CAPABILITY, {"n": i}))

    def wait_ours(self, call: Any) -> TaskResult:
        done = self.client.tasks.router.result(call)
        if not done.ok:
            raise TaskFailed(f"bench task failed: {done.error}")
        return done

    def submit_raw(self, i: int) -> Any:
        return self.raw.noop.remote(i)

    @staticmethod
    def wait_raw(ref: Any) -> Any:
        return ray.get(ref)

    def pipelined(self, calls: int, window: int) -> tuple[Callable[[], float], Callable[[], float]]:
        """Measurements of ours and raw Ray's throughput with `window` calls in flight."""
        return (
            lambda: throughput(self.submit_ours, self.wait_ours, calls, window),
            lambda: throughput(self.submit_raw, self.wait_raw, calls, window),
        )


def tasks_suite(client: Client, quick: bool) -> list[Result]:
    """Routed task latency, throughput, replica start time and memory against raw Ray."""
    plan = QUICK if quick else FULL
    spec = bench_spec()
    client.agents.apply(spec)
    raw = raw_actor_class().options(max_concurrency=CONCURRENCY).remote()
    sides = Sides(client, raw)
    try:
        for window in (16, 1):  # warm both sides: imports, connections, the pool view
            for warm in sides.pipelined(plan.warmup, window):
                warm()
        results = [_sync_rtt(sides, plan)]
        for window in WINDOWS:
            value, baseline = paired(plan.rounds, *sides.pipelined(plan.calls, window))
            results.append(
                result("tasks", f"routed_pipelined_{window}", value, "tasks/s", baseline)
            )
        results += _memory(client, raw)
        results.append(_replica_start(client, spec, plan))
    finally:
        ray.kill(raw, no_restart=True)
    return results


def _sync_rtt(sides: Sides, plan: Plan) -> Result:
    value, baseline = paired(
        plan.rounds,
        lambda: latency_ms(sides.submit_ours, sides.wait_ours, plan.sync_calls),
        lambda: latency_ms(sides.submit_raw, sides.wait_raw, plan.sync_calls),
    )
    return result("tasks", "routed_sync_rtt", value, "ms", baseline)


def _memory(client: Client, raw: Any) -> list[Result]:
    """USS of the pool's replica and of the raw actor, both warm from the runs above."""
    prefix = f"{client.settings.tenant}/{bench_spec().agent_id}/"
    replicas = RayLauncher().find(prefix)
    if not replicas:
        raise ReplicaDied(f"the bench replica {prefix!r}... is gone; run the bench again")
    replica = next(iter(replicas.values()))
    ours = uss_mb(ray.get(replica.health.remote()).pid)
    theirs = uss_mb(ray.get(raw.pid.remote()))
    if ours is None:  # the replica runs on another node: nothing to measure here
        return []
    return [result("tasks", "replica_uss_mb", ours, "MiB", theirs)]


def _replica_start(client: Client, spec: AgentSpec, plan: Plan) -> Result:
    """Seconds from asking for a replica to its first answer, against a raw actor's."""
    launcher = RayLauncher()
    counter = itertools.count(1)
    options = {"namespace": RAY_NAMESPACE, "lifetime": "detached", "max_restarts": 0}

    def ours() -> float:
        started = time.perf_counter()
        handle = launcher.start(spec, f"{client.settings.tenant}/start/{next(counter)}")
        pid = ray.get(handle.health.remote(), timeout=120).pid
        elapsed = time.perf_counter() - started
        launcher.stop(handle)
        _await_exit(pid)
        return elapsed

    def raw() -> float:
        name = f"{client.settings.tenant}/raw-start/{next(counter)}"
        started = time.perf_counter()
        handle = (
            raw_actor_class().options(name=name, max_concurrency=CONCURRENCY, **options).remote()
        )
        pid = ray.get(handle.pid.remote(), timeout=120)
        elapsed = time.perf_counter() - started
        ray.kill(handle, no_restart=True)
        _await_exit(pid)
        return elapsed

    value, baseline = paired(plan.starts, ours, raw)
    return result("tasks", "replica_start_s", value, "s", baseline)


def workflows_suite(client: Client, quick: bool) -> list[Result]:
    """The durable engine against raw Ray DAGs (see `cluster.bench.workflows`)."""
    from cluster.bench.workflows import run_workflows_suite

    return run_workflows_suite(client, quick)


def hub_suite(client: Client, quick: bool) -> list[Result]:
    """Hub send+deliver throughput against raw redis-py streams; cache hit latency."""
    from cluster.bench.cache import measure_cache
    from cluster.bench.hub import measure_hub

    return measure_hub(client.store, quick) + measure_cache(client.store, quick)


def api_suite(client: Client, quick: bool) -> list[Result]:
    """API no-op task throughput and p50/p99 over HTTP against plain Serve (`cluster.bench.api`)."""
    from cluster.bench.api import run_api_suite

    return run_api_suite(client, quick)


def scale_suite(client: Client, quick: bool) -> list[Result]:
    """Throughput as a pool grows from 1 to 8 replicas; a pool's growth under a burst."""
    from cluster.bench.scale import run_scale_suite

    return run_scale_suite(client, quick)


SUITES: dict[str, Suite] = {
    "tasks": tasks_suite,
    "workflows": workflows_suite,
    "hub": hub_suite,
    "api": api_suite,
    "scale": scale_suite,
}


# -- the table -----------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _verdict(row: Result) -> str:
    target = TARGETS.get(row["name"])
    if target is None or row[target[0]] is None:
        return ""
    field, op, bound = target
    met = row[field] <= bound if op == "<=" else row[field] >= bound
    label = f"{op} {bound}" + ("x" if field == "ratio" else f" {row['unit']}")
    return f"[{'green' if met else 'red'}]{label}[/]"


_NUMERIC = {"value", "baseline", "ratio"}


def render_table(report: dict[str, Any]) -> Table:
    """The report as a rich table: ours, raw Ray's, their ratio and the target if any."""
    from rich.table import Table

    machine = report["machine"]
    table = Table(
        title=f"dafnck bench: Ray {machine['ray']}, Python {machine['python']}, "
        f"{machine['cpus']} CPUs, {machine['memory_gb']} GB",
        caption="baseline: raw Ray (raw redis-py streams for the hub, plain Serve for the API), measured in the same run; ratio = ours / baseline",
    )
    for column in ("suite", "metric", "value", "unit", "baseline", "ratio", "target"):
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for row in report["results"]:
        table.add_row(
            row["suite"], row["name"], _number(row["value"]), row["unit"],
            _number(row["baseline"]), _number(row["ratio"]), _verdict(row),
        )  # fmt: skip
    return table
