"""Caller-side routing: pick a replica by power-of-two-choices and call it directly.

The supervisor is not on the hot path: a caller asks it once for a pool's replicas
(`PoolView`, cached for `ttl_s`), then sends tasks straight to the replicas, counting its
own in-flight calls per replica as Ray Serve's router does. A replica that dies is
dropped from the view and the task is tried on another, per the agent's retry policy.

This module is the policy only: it reaches replicas through a `ReplicaCalls` (Ray's is
`actors.replicas.RayReplicaCalls`) and reads time from an injected clock, so it is tested
without Ray and without sleeping.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from jsonschema import Draft202012Validator

from actors.models import RetryPolicy, Task, TaskResult
from actors.observe import TaskMeter
from cluster.errors import (
    DafnckError,
    InputInvalid,
    QueueFull,
    ReplicaDied,
    TaskCancelled,
    TaskTimeout,
)

#: How long a caller waits past the task's own timeout before it gives up on the replica.
_GRACE_S = 5.0
#: How often a retry looks for a replacement when every replica it knew has died.
_REPLACEMENT_POLL_S = 0.2

Clock = Callable[[], float]


class ReplicaCalls(Protocol):
    """How the router reaches replicas: Ray in production, a fake in unit tests."""

    def send(self, replica: Any, task: dict[str, Any]) -> Any:
        """Start `task` on `replica` (a handle from a `PoolView`); returns the call's handle
        at once."""
        ...

    def wait(self, ref: Any, timeout_s: float) -> dict[str, Any]:
        """The call's `TaskResult` as a dict. Raises: ReplicaDied, TimeoutError."""
        ...

    async def wait_async(self, ref: Any, timeout_s: float) -> dict[str, Any]:
        """`wait` on an event loop. Raises: ReplicaDied, TimeoutError."""
        ...

    def cancel(self, ref: Any) -> None:
        """Stop the call on its replica (an async skill sees CancelledError); a no-op once
        the call has answered."""
        ...


@dataclass
class PoolView:
    """What a caller needs to route to one agent's pool."""

    agent_id: str
    replicas: dict[str, Any]  # replica name -> handle (an ActorHandle under Ray)
    schemas: dict[str, dict[str, Any]]  # capability -> JSON schema of the input
    max_concurrency: int
    max_queued: int
    timeout_s: float
    retry: RetryPolicy
    #: When this caller fetched the view, on its own clock (the supervisor's may differ).
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


@dataclass(eq=False)
class Call:
    """A task in flight: its current attempt on one replica (a retry moves it in place, so
    `PoolRouter.cancel` always reaches the attempt that runs)."""

    task: Task
    pool: PoolView
    replica: str
    ref: Any
    #: The attempt holds one of the router's in-flight slots on `replica`.
    holding: bool = True
    #: A final result was returned, or the call was cancelled or abandoned.
    finished: bool = False
    cancelled: bool = False


class PoolRouter:
    """Routes tasks to replicas; safe to use from one thread or one event loop."""

    def __init__(
        self,
        source: PoolSource,
        ttl_s: float = 2.0,
        *,
        blocking_source: bool = True,
        calls: ReplicaCalls | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if calls is None:  # the production transport; unit tests pass a fake
            from actors.replicas import RayReplicaCalls

            calls = RayReplicaCalls()
        self._source = source
        self._calls = calls
        self._clock = clock
        self._rng = rng or random.Random()
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

    def in_flight(self, replica: str) -> int:
        """Calls this router has open on `replica` (what power-of-two-choices compares)."""
        return self._in_flight.get(replica, 0)

    # -- sending -------------------------------------------------------------------------

    def submit(self, task: Task) -> Call:
        """Validate the input and send the task to a replica; returns at once.

        Raises:
            AgentNotFound, InputInvalid, QueueFull.
        """
        pool = self._pool(task.capability, task.agent)
        task = capped(task, pool)
        self._validate(pool, task)
        if not pool.replicas and pool.waking:
            deadline = self._clock() + (task.timeout_s or pool.timeout_s)
            while not pool.replicas and self._clock() < deadline:
                time.sleep(_REPLACEMENT_POLL_S)  # each look tells the supervisor we wait
                pool = self._pool(task.capability, task.agent, refresh=True)
        return self._send(task, pool)

    async def submit_async(self, task: Task) -> Call:
        """`submit` for callers on an event loop: a stale pool view (a blocking call to the
        supervisor) is fetched in a worker thread; everything else stays on the loop."""
        pool = self._pools.get((task.capability, task.agent))
        if pool is None or self._stale(pool):
            pool = await self._fetch_async(task.capability, task.agent)
        task = capped(task, pool)
        self._validate(pool, task)  # bad input fails before any wait
        if not pool.replicas and pool.waking:
            deadline = self._clock() + (task.timeout_s or pool.timeout_s)
            while not pool.replicas and self._clock() < deadline:
                await asyncio.sleep(_REPLACEMENT_POLL_S)
                pool = await self._fetch_async(task.capability, task.agent)
        return self._send(task, pool)

    def _send(self, task: Task, pool: PoolView) -> Call:
        if not pool.replicas:
            pool = self._pool(task.capability, task.agent, refresh=True)
        name = self._pick(pool)
        task = self._meter.begin(task)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        try:
            ref = self._calls.send(pool.replicas[name], task.model_dump())
        except BaseException:
            self._in_flight[name] -= 1
            raise
        return Call(task, pool, name, ref)

    def _pick(self, pool: PoolView) -> str:
        """Power of two choices: of two replicas drawn at random, the one with fewer calls."""
        names = list(pool.replicas)
        if not names:
            raise ReplicaDied(f"agent {pool.agent_id!r} has no live replica yet; try again")
        if sum(self.in_flight(n) for n in names) >= pool.capacity:
            raise QueueFull(
                f"agent {pool.agent_id!r} has {pool.capacity} tasks in flight, its limit; retry later"
            )
        if len(names) == 1:
            return names[0]
        a, b = self._rng.sample(names, 2)
        return a if self.in_flight(a) <= self.in_flight(b) else b

    def _pool(self, capability: str, agent: str | None, refresh: bool = False) -> PoolView:
        pool = self._pools.get((capability, agent))
        if refresh or pool is None or self._stale(pool):
            pool = self._keep(capability, agent, self._source(capability, agent))
        return pool

    async def _fetch_async(self, capability: str, agent: str | None) -> PoolView:
        if self._blocking:
            pool = await asyncio.to_thread(self._source, capability, agent)
        else:
            pool = self._source(capability, agent)
        return self._keep(capability, agent, pool)

    def _stale(self, pool: PoolView) -> bool:
        return self._clock() - pool.fetched_at > self._ttl_s

    def _keep(self, capability: str, agent: str | None, pool: PoolView) -> PoolView:
        pool.fetched_at = self._clock()
        pool.replicas = {n: h for n, h in pool.replicas.items() if h not in self._dead}
        self._pools[(capability, agent)] = pool
        return pool

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
        """Wait for the call, retrying on another replica when one dies. A waiter that
        leaves early (an error, an interrupt) cancels the task and gives back its slot.

        Raises:
            TaskCancelled: the call was cancelled.
        """
        try:
            while True:
                self._check(call)
                raw: dict[str, Any] | BaseException
                try:
                    raw = self._calls.wait(call.ref, self._wait_s(call))
                except (ReplicaDied, TimeoutError) as exc:
                    raw = exc
                except Exception:
                    self._check(call)  # cancelled while waiting: say so, not how Ray put it
                    raise
                self._check(call)
                outcome = raw if isinstance(raw, BaseException) else TaskResult.model_validate(raw)
                retry = self._settle(call, outcome)
                if isinstance(retry, TaskResult):
                    return retry
                time.sleep(call.pool.retry.backoff_s)
                self._check(call)
                deadline = self._clock() + self._wait_s(call)
                pool = self._live_pool(retry, call.pool)
                while not pool.replicas and self._clock() < deadline:
                    time.sleep(_REPLACEMENT_POLL_S)  # the supervisor is starting a replacement
                    pool = self._live_pool(retry, pool)
                self._resend(call, retry, pool)
        finally:
            self._abandon(call)

    async def result_async(self, call: Call) -> TaskResult:
        """`result` for callers on an event loop. A waiter cancelled by asyncio (a step
        timeout, an execution cancel, a sibling's failure) cancels the task too.

        Raises:
            TaskCancelled: the call was cancelled.
        """
        try:
            while True:
                self._check(call)
                raw: dict[str, Any] | BaseException
                try:
                    raw = await self._calls.wait_async(call.ref, self._wait_s(call))
                except (ReplicaDied, TimeoutError) as exc:
                    raw = exc
                except Exception:
                    self._check(call)
                    raise
                self._check(call)
                outcome = raw if isinstance(raw, BaseException) else TaskResult.model_validate(raw)
                retry = self._settle(call, outcome)
                if isinstance(retry, TaskResult):
                    return retry
                await asyncio.sleep(call.pool.retry.backoff_s)
                self._check(call)
                deadline = self._clock() + self._wait_s(call)
                pool = call.pool
                while not pool.replicas and self._clock() < deadline:
                    pool = await self._fetch_async(retry.capability, retry.agent)
                    if not pool.replicas:
                        await asyncio.sleep(_REPLACEMENT_POLL_S)
                self._resend(call, retry, pool)
        finally:
            self._abandon(call)

    def run(self, task: Task) -> TaskResult:
        return self.result(self.submit(task))

    async def run_async(self, task: Task) -> TaskResult:
        return await self.result_async(await self.submit_async(task))

    def cancel(self, call: Call) -> bool:
        """Stop the call's task on its replica and give back its slot at once; a waiter
        on it gets `TaskCancelled`. Returns False when the call had already ended."""
        if call.finished:
            return False
        call.cancelled = True
        self._abandon(call)
        return True

    # -- bookkeeping ---------------------------------------------------------------------

    def _check(self, call: Call) -> None:
        if call.cancelled:
            raise TaskCancelled(f"task {call.task.id} was cancelled")

    def _release(self, call: Call) -> None:
        if call.holding:
            call.holding = False
            self._in_flight[call.replica] -= 1

    def _abandon(self, call: Call) -> None:
        """Every way out of a call that did not return its result: the remote task is
        stopped, the slot given back, the meter closed."""
        if call.finished:
            return
        call.finished = True
        if call.holding:
            self._calls.cancel(call.ref)
            self._release(call)
        error = TaskCancelled(f"task {call.task.id} was cancelled or abandoned by its caller")
        self._meter.end(call.task, self._failed(call, error))

    def _resend(self, call: Call, task: Task, pool: PoolView) -> None:
        attempt = self._send(task, pool)
        call.task, call.pool, call.replica, call.ref = task, pool, attempt.replica, attempt.ref
        call.holding = True

    def _live_pool(self, task: Task, pool: PoolView) -> PoolView:
        """The pool to retry on: `pool` while it has a live replica, else a fresh view."""
        return pool if pool.replicas else self._pool(task.capability, task.agent, refresh=True)

    def _wait_s(self, call: Call) -> float:
        return (call.task.timeout_s or call.pool.timeout_s) + _GRACE_S

    def _settle(self, call: Call, outcome: TaskResult | BaseException) -> TaskResult | Task:
        """The final result, or the next attempt's task when a retry is due."""
        self._release(call)
        task = call.task
        if isinstance(outcome, TaskResult):
            result = outcome
        else:
            result = self._failed(call, self._failure(call, outcome))
        attempt = task.context.attempt
        if (
            result.ok
            or not (result.error and result.error.retryable)
            or attempt >= call.pool.retry.max_attempts
        ):
            call.finished = True
            self._meter.end(task, result)
            return result
        return task.model_copy(
            update={"context": task.context.model_copy(update={"attempt": attempt + 1})}
        )

    def _failed(self, call: Call, error: DafnckError) -> TaskResult:
        return TaskResult(task_id=call.task.id, status="failed", error=error.to_dict(),
                          agent=call.pool.agent_id, replica=call.replica,
                          attempts=call.task.context.attempt)  # fmt: skip

    def _failure(self, call: Call, exc: BaseException) -> DafnckError:
        if isinstance(exc, ReplicaDied):
            self._dead.add(call.pool.replicas.get(call.replica))
            call.pool.replicas.pop(call.replica, None)
            self._pools.pop((call.task.capability, call.task.agent), None)
            return ReplicaDied(f"replica {call.replica} died while running task {call.task.id}")
        self._calls.cancel(call.ref)
        return TaskTimeout(
            f"task {call.task.id} got no answer from {call.replica} in {self._wait_s(call)}s"
        )
