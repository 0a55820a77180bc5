"""What the bench suites share: the report row, the no-op agent and its raw Ray twin, and
the throughput loop. `cluster.bench.core` runs the suites; each suite module imports this,
never core, so the suites and their runner do not import each other.
"""

from __future__ import annotations

import functools
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from actors.models import AgentSpec, Replicas

#: One row of the report (`result` builds it).
Result = dict[str, Any]

CAPABILITY = "bench.noop"
CONCURRENCY = 64


@functools.cache
def raw_actor_class() -> Any:
    """A plain Ray async actor doing the same no-op: the baseline.

    Defined inside a function so Ray pickles it by value: its worker imports nothing of
    ours, which keeps the memory baseline honest.
    """

    class RawActor:
        async def noop(self, n: int = 0) -> int:
            return n

        async def pid(self) -> int:
            return os.getpid()

    return ray.remote(num_cpus=0)(RawActor)


def result(suite: str, name: str, value: float, unit: str, baseline: float | None) -> Result:
    """One row of the report; `ratio` is ours over raw Ray's."""
    value = round(value, 4)
    baseline = round(baseline, 4) if baseline is not None else None
    ratio = round(value / baseline, 4) if baseline else None
    return {
        "suite": suite,
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
    }


def throughput(
    submit: Callable[[int], Any], wait: Callable[[Any], Any], calls: int, window: int
) -> float:
    """Calls per second keeping `window` in flight: each time the oldest ends, send one more."""
    pending: deque[Any] = deque()
    started = time.perf_counter()
    for i in range(calls):
        if len(pending) >= window:
            wait(pending.popleft())
        pending.append(submit(i))
    while pending:
        wait(pending.popleft())
    return calls / (time.perf_counter() - started)


def bench_spec() -> AgentSpec:
    """One replica of `noop`, as concurrent as the raw actor it is compared with."""
    return AgentSpec(
        name="bench-noop",
        description="dafnck bench: an async no-op",
        capabilities=[CAPABILITY],
        entrypoint="actors.examples.bench_agents:noop",
        replicas=Replicas(min=1, max=1),
        max_concurrency=CONCURRENCY,
    )


__all__ = [
    "CAPABILITY",
    "CONCURRENCY",
    "Result",
    "bench_spec",
    "raw_actor_class",
    "result",
    "throughput",
]
