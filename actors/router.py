"""Caller-side routing: pick a replica by power-of-two-choices and call it directly.

The supervisor is not on the hot path: a caller asks it once for a pool's replicas
(`PoolView`, cached for `ttl_s`), then sends tasks straight to the replicas, counting its
own in-flight calls per replica as Ray Serve's router does. A replica that dies is
dropped from the view and the task is tried on another, per the agent's retry policy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from jsonschema import Draft202012Validator
from ray.exceptions import GetTimeoutError, RayActorError

from actors.models import RetryPolicy, Task, TaskResult
from actors.observe import TaskMeter
from cluster.errors import (
    DafnckError,
    InputInvalid,
    QueueFull,
    ReplicaDied,
    TaskTimeout,
)

#: How long a caller waits past the task's own timeout before it gives up on the replica.
_GRACE_S = 5.0
#: How often a retry looks for a replacement when every replica it knew has died.
_REPLACEMENT_POLL_S = 0.2


@dataclass
class PoolView:
    """What a caller needs to route to one agent's pool."""

    agent_id: str
    replicas: dict[str, Any]  # replica name -> ActorHandle
    schemas: dict[str, dict[str, Any]]  # capability -> JSON schema of the input
    max_concurrency: int
    max_queued: int
    timeout_s: float
    retry: RetryPolicy
    fetched_at: float = field(default_factory=time.monotonic)
    #: The pool may be scaled to zero: a task waits for the replica its arrival wakes.
    waking: bool = False

    @property
    def capacity(self) -> int:
        return len(self.replicas) * (self.max_concurrency + self.max_queued)


def capped(task: Task, pool: PoolView) -> Task:
    """The task with its timeout at most the agent's: a caller cannot hold a slot longer."""
    if task.timeout_s is None or task.timeout_s <= pool.timeout_s:
        return task
    return task.model_copy(update={"timeout_s": pool.timeout_s})


#: (capability, agent selector or None) -> the pool to use. Raises AgentNotFound.
PoolSource = Callable[[str, str | None], PoolView]


@dataclass
class Call:
    """One attempt of a task in flight on one replica."""

    task: Task
    pool: PoolView
    replica: str
    ref: Any


class PoolRouter:
    """Routes tasks to replicas; safe to use from one thread or one event loop."""

    def __init__(
        self, source: PoolSource, ttl_s: float = 2.0, *, blocking_source: bool = True
    ) -> None:
        self._source = source
        #: A source that makes a blocking call (a Ray round trip) is run off the event loop.
        self._blocking = blocking_source
        self._ttl_s = ttl_s
        self._pools: dict[tuple[str, str | None], PoolView] = {}
        self._in_flight: dict[str, int] = {}
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}
        #: Handles seen dead: the supervisor may list them until its next reconcile.
        self._dead: set[Any] = set()
        #: Task counts, latency and spans (cluster.metrics, cluster.tracing).
        self._meter = TaskMeter()

    # -- sending -------------------------------------------------------------------------

    def submit(self, task: Task) -> Call:
        """Validate the input and send the task to a replica; returns at once.

        Raises:
            AgentNotFound, InputInvalid, QueueFull.
        """
        return self._submit(task, wait=True)

    def _submit(self, task: Task, wait: bool) -> Call:
        pool = self._pool(task.capability, task.agent)
        task = capped(task, pool)
        self._validate(pool, task)
        if wait and not pool.replicas and pool.waking:
            deadline = time.monotonic() + (task.timeout_s or pool.timeout_s)
            while not pool.replicas and time.monotonic() < deadline:
                time.sleep(_REPLACEMENT_POLL_S)  # each look tells the supervisor we wait
                pool = self._pool(task.capability, task.agent, refresh=True)
        return self._send(task, pool)

    def _send(self, task: Task, pool: PoolView) -> Call:
        if not pool.replicas:
            pool = self._pool(task.capability, task.agent, refresh=True)
        name = self._pick(pool)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        task = self._meter.begin(task)
        return Call(task, pool, name, pool.replicas[name].run.remote(task.model_dump()))

    def _pick(self, pool: PoolView) -> str:
        names = list(pool.replicas)
        if not names:
            raise ReplicaDied(f"agent {pool.agent_id!r} has no live replica yet; try again")
        if sum(self._in_flight.get(n, 0) for n in names) >= pool.capacity:
            raise QueueFull(
                f"agent {pool.agent_id!r} has {pool.capacity} tasks in flight, its limit; retry later"
            )
        if len(names) == 1:
            return names[0]
        a, b = random.sample(names, 2)
        return a if self._in_flight.get(a, 0) <= self._in_flight.get(b, 0) else b

    def _pool(self, capability: str, agent: str | None, refresh: bool = False) -> PoolView:
        pool = self._pools.get((capability, agent))
        if refresh or self._stale(pool):
            pool = self._keep(capability, agent, self._source(capability, agent))
        assert pool is not None
        return pool

    def _stale(self, pool: PoolView | None) -> bool:
        return pool is None or time.monotonic() - pool.fetched_at > self._ttl_s

    def _keep(self, capability: str, agent: str | None, pool: PoolView) -> PoolView:
        pool.fetched_at = time.monotonic()
        pool.replicas = {n: h for n, h in pool.replicas.items() if h not in self._dead}
        self._pools[(capability, agent)] = pool
        return pool

    async def submit_async(self, task: Task) -> Call:
        """`submit` for callers on an event loop: a stale pool view (a blocking call to the
        supervisor) is fetched in a worker thread; everything else stays on the loop."""
        if self._blocking and self._stale(self._pools.get((task.capability, task.agent))):
            pool = await asyncio.to_thread(self._source, task.capability, task.agent)
            self._keep(task.capability, task.agent, pool)
        pool = self._pool(task.capability, task.agent)
        if not pool.replicas and pool.waking:
            self._validate(pool, task)  # bad input fails before any wait
            await self._await_replica(capped(task, pool), pool)
        return self._submit(task, wait=False)

    async def _await_replica(self, task: Task, pool: PoolView) -> None:
        """Wait (off the loop's critical path) until a pool scaled to zero has a replica."""
        deadline = time.monotonic() + (task.timeout_s or pool.timeout_s)
        while not pool.replicas and time.monotonic() < deadline:
            await asyncio.sleep(_REPLACEMENT_POLL_S)
            if self._blocking:
                pool = await asyncio.to_thread(self._source, task.capability, task.agent)
            else:
                pool = self._source(task.capability, task.agent)
            self._keep(task.capability, task.agent, pool)

    def _live_pool(self, task: Task, pool: PoolView) -> PoolView:
        """The pool to retry on: `pool` while it has a live replica, else a fresh view."""
        return pool if pool.replicas else self._pool(task.capability, task.agent, refresh=True)

    def _validate(self, pool: PoolView, task: Task) -> None:
        key = (pool.agent_id, task.capability)
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = Draft202012Validator(
                pool.schemas.get(task.capability, {})
            )
        errors = sorted(validator.iter_errors(task.input), key=lambda e: list(e.path))
        if errors:
            problems = [f"{'.'.join(map(str, e.path)) or 'input'}: {e.message}" for e in errors]
            raise InputInvalid(f"input of {task.capability!r}", problems)

    # -- receiving -----------------------------------------------------------------------

    def result(self, call: Call) -> TaskResult:
        """Wait for the call, retrying on another replica when one dies."""
        while True:
            try:
                outcome: TaskResult | BaseException = TaskResult.model_validate(
                    ray.get(call.ref, timeout=self._wait_s(call))
                )
            except (RayActorError, GetTimeoutError) as exc:
                outcome = exc
            retry = self._settle(call, outcome)
            if isinstance(retry, TaskResult):
                return retry
            time.sleep(call.pool.retry.backoff_s)
            pool = call.pool
            deadline = time.monotonic() + self._wait_s(call)
            while (
                not (pool := self._live_pool(retry, pool)).replicas and time.monotonic() < deadline
            ):
                time.sleep(_REPLACEMENT_POLL_S)  # the supervisor is starting a replacement
            call = self._send(retry, pool)

    async def result_async(self, call: Call) -> TaskResult:
        """`result` for callers on an event loop."""
        while True:
            try:
                async with asyncio.timeout(self._wait_s(call)):
                    outcome: TaskResult | BaseException = TaskResult.model_validate(await call.ref)
            except (RayActorError, TimeoutError) as exc:
                outcome = exc
            retry = self._settle(call, outcome)
            if isinstance(retry, TaskResult):
                return retry
            await asyncio.sleep(call.pool.retry.backoff_s)
            pool = call.pool
            deadline = time.monotonic() + self._wait_s(call)
            while (
                not (pool := self._live_pool(retry, pool)).replicas and time.monotonic() < deadline
            ):
                await asyncio.sleep(_REPLACEMENT_POLL_S)
            call = self._send(retry, pool)

    def run(self, task: Task) -> TaskResult:
        return self.result(self.submit(task))

    async def run_async(self, task: Task) -> TaskResult:
        return await self.result_async(await self.submit_async(task))

    def _wait_s(self, call: Call) -> float:
        return (call.task.timeout_s or call.pool.timeout_s) + _GRACE_S

    def _settle(self, call: Call, outcome: TaskResult | BaseException) -> TaskResult | Task:
        """The final result, or the next attempt's task when a retry is due."""
        self._in_flight[call.replica] -= 1
        task = call.task
        if isinstance(outcome, TaskResult):
            result = outcome
        else:
            error = self._failure(call, outcome)
            result = TaskResult(task_id=task.id, status="failed", error=error.to_dict(),
                                agent=call.pool.agent_id, replica=call.replica,
                                attempts=task.context.attempt)  # fmt: skip
        attempt = task.context.attempt
        if (
            result.ok
            or not (result.error and result.error.retryable)
            or attempt >= call.pool.retry.max_attempts
        ):
            self._meter.end(task, result)
            return result
        return task.model_copy(
            update={"context": task.context.model_copy(update={"attempt": attempt + 1})}
        )

    def _failure(self, call: Call, exc: BaseException) -> DafnckError:
        if isinstance(exc, RayActorError):
            self._dead.add(call.pool.replicas.get(call.replica))
            call.pool.replicas.pop(call.replica, None)
            self._pools.pop((call.task.capability, call.task.agent), None)
            return ReplicaDied(f"replica {call.replica} died while running task {call.task.id}")
        ray.cancel(call.ref)
        return TaskTimeout(
            f"task {call.task.id} got no answer from {call.replica} in {self._wait_s(call)}s"
        )
