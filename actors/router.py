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
import concurrent.futures
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from actors.models import Task, TaskResult
from actors.observe import TaskMeter
from actors.pools import Clock, PoolSource, PoolView, ReplicaCalls, capped
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


@dataclass(eq=False)
class Call:
    """A task in flight: its current attempt on one replica (a retry moves it in place, so
    `PoolRouter.cancel` always reaches the attempt that runs)."""

    task: Task
    pool: PoolView
    replica: str
    ref: Any
    #: The router's own wait on the call (`PoolRouter._drive`): an asyncio task, or a
    #: future of it on the router's loop for blocking callers.
    outcome: asyncio.Future[TaskResult] | concurrent.futures.Future[TaskResult] | None = None
    #: A final result was reached, or the call was cancelled or abandoned.
    finished: bool = False
    cancelled: bool = False


class PoolRouter:
    """Routes tasks to replicas and owns each call until it ends: a call whose replica died
    is sent again at once, whether or not anyone is reading it. Safe to use from threads
    (blocking callers) or from one event loop."""

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
        #: replica -> this router's open calls on it, oldest first (their count is what
        #: power-of-two-choices compares).
        self._open: dict[str, dict[Call, None]] = {}
        #: dead replica -> the calls that had started on it when its death was first seen.
        self._began: dict[str, set[Call]] = {}
        self._lock = threading.RLock()
        self._drivers: set[asyncio.Future[TaskResult]] = set()
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}
        #: Handles seen dead: the supervisor may list them until its next reconcile.
        self._dead: set[Any] = set()
        #: Task counts, latency and spans (cluster.metrics, cluster.tracing).
        self._meter = TaskMeter()

    def in_flight(self, replica: str) -> int:
        """Calls this router has open on `replica`."""
        return len(self._open.get(replica, ()))

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
        call = self._send(task, pool)
        call.outcome = asyncio.run_coroutine_threadsafe(self._drive(call), _router_loop())
        call.outcome.add_done_callback(lambda _: self._abandon(call))  # cancelled unstarted
        return call

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
        call = self._send(task, pool)
        call.outcome = asyncio.ensure_future(self._drive(call))
        # A driver cancelled before its first step never runs its `finally`.
        call.outcome.add_done_callback(lambda _: self._abandon(call))
        return call

    def _send(self, task: Task, pool: PoolView) -> Call:
        call = Call(task, pool, "", None)
        self._place(call, pool)
        return call

    def _place(self, call: Call, pool: PoolView) -> None:
        """Send the call's task to the replica power-of-two-choices picks."""
        if not pool.replicas:
            pool = self._pool(call.task.capability, call.task.agent, refresh=True)
        with self._lock:
            name = self._pick(pool)
            call.task = self._meter.begin(call.task)  # the first send starts its clock
            call.ref = self._calls.send(pool.replicas[name], call.task.model_dump())
            call.pool, call.replica = pool, name
            self._open.setdefault(name, {})[call] = None

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
        """Wait for the call's final result (retries included). Interrupted (Ctrl-C), the
        task is cancelled on its replica.

        Raises:
            TaskCancelled: the call was cancelled.
        """
        outcome = call.outcome
        if not isinstance(outcome, concurrent.futures.Future):
            raise TypeError("a call submitted with submit_async is read with result_async")
        try:
            return outcome.result()
        except concurrent.futures.CancelledError:
            raise TaskCancelled(f"task {call.task.id} was cancelled") from None
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.cancel(call)
            raise

    async def result_async(self, call: Call) -> TaskResult:
        """`result` for callers on an event loop. A waiter cancelled by asyncio (a step
        timeout, an execution cancel, a sibling's failure) cancels the task too.

        Raises:
            TaskCancelled: the call was cancelled.
        """
        outcome = call.outcome
        assert outcome is not None
        waited = outcome if isinstance(outcome, asyncio.Future) else asyncio.wrap_future(outcome)
        try:
            return await waited
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if call.cancelled and not (me and me.cancelling()):
                raise TaskCancelled(f"task {call.task.id} was cancelled") from None
            raise

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
        outcome = call.outcome
        if isinstance(outcome, asyncio.Future):
            outcome.get_loop().call_soon_threadsafe(outcome.cancel)
        elif outcome is not None:
            outcome.cancel()
        return True

    async def _drive(self, call: Call) -> TaskResult:
        """The router's own wait on a call, from its first send to its final result: a
        retry is sent as soon as a replica dies, whether or not anyone reads the call."""
        me = asyncio.current_task()
        assert me is not None
        self._drivers.add(me)  # a loop keeps only weak references to its tasks
        try:
            while True:
                outcome = await self._answer(call)
                retry = self._settle(call, outcome)
                if isinstance(retry, TaskResult):
                    return retry
                if retry.context.attempt > call.task.context.attempt:  # it ran: back off
                    await asyncio.sleep(call.pool.retry.backoff_s)
                call.task = retry
                await self._replace(call)
        finally:
            self._drivers.discard(me)
            self._abandon(call)

    async def _answer(self, call: Call) -> TaskResult | ReplicaDied | TimeoutError:
        self._check(call)
        try:
            raw = await self._calls.wait_async(call.ref, self._wait_s(call))
        except (ReplicaDied, TimeoutError) as exc:
            return exc
        except Exception:
            self._check(call)  # cancelled while waiting: say so, not how Ray put it
            raise
        self._check(call)
        return TaskResult.model_validate(raw)

    async def _replace(self, call: Call) -> None:
        """Send the call's next attempt, waiting while the supervisor replaces the pool's
        last replica."""
        deadline = self._clock() + self._wait_s(call)
        pool = call.pool
        while not pool.replicas and self._clock() < deadline:
            self._check(call)
            pool = await self._fetch_async(call.task.capability, call.task.agent)
            if not pool.replicas:
                await asyncio.sleep(_REPLACEMENT_POLL_S)
        self._check(call)
        self._place(call, pool)

    # -- bookkeeping ---------------------------------------------------------------------

    def _check(self, call: Call) -> None:
        if call.cancelled:
            raise TaskCancelled(f"task {call.task.id} was cancelled")

    def _release(self, call: Call) -> None:
        with self._lock:
            calls = self._open.get(call.replica, {})
            calls.pop(call, None)
            if not calls and call.replica in self._began:
                del self._began[call.replica]  # every call it had is settled

    def _abandon(self, call: Call) -> None:
        """Every way out of a call that did not return its result: the remote task is
        stopped, the slot given back, the meter closed."""
        error = TaskCancelled(f"task {call.task.id} was cancelled or abandoned by its caller")
        with self._lock:
            if call.finished:
                return
            call.finished = True
            holding = call in self._open.get(call.replica, {})
            self._release(call)
            self._meter.end(call.task, self._failed(call, error))
        if holding:
            self._calls.cancel(call.ref)

    def _had_started(self, call: Call) -> bool:
        """Whether the call had started on its replica, which just died. Known only to the
        replica, so estimated at the first news of the death: a replica runs
        `max_concurrency` calls at once and takes them in order, so this router's oldest
        that many calls on it had started and the rest were queued."""
        with self._lock:
            began = self._began.get(call.replica)
            if began is None:
                oldest = list(self._open.get(call.replica, {}))[: call.pool.max_concurrency]
                began = self._began[call.replica] = set(oldest)
            return call in began

    def _wait_s(self, call: Call) -> float:
        return (call.task.timeout_s or call.pool.timeout_s) + _GRACE_S

    def _settle(self, call: Call, outcome: TaskResult | BaseException) -> TaskResult | Task:
        """The final result, or the next attempt's task when a retry is due (the same
        attempt again when the replica died before the task started)."""
        task = call.task
        with self._lock:  # blocking callers send from their own thread meanwhile
            started = not isinstance(outcome, ReplicaDied) or self._had_started(call)
            self._release(call)
            failure = None if isinstance(outcome, TaskResult) else self._failure(call, outcome)
        if isinstance(outcome, TaskResult):
            result = outcome
        else:
            assert failure is not None
            result = self._failed(call, failure)
            if not started:
                return task
        attempt = task.context.attempt
        if (
            result.ok
            or not (result.error and result.error.retryable)
            or attempt >= call.pool.retry.max_attempts
        ):
            with self._lock:
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


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _router_loop() -> asyncio.AbstractEventLoop:
    """The event loop (in a daemon thread) on which blocking callers' calls are driven."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="dafnck-router", daemon=True).start()
        return _loop


__all__ = ["Call", "PoolRouter", "PoolSource", "PoolView", "ReplicaCalls", "capped"]
