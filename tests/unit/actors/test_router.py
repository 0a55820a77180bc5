"""The caller-side router's policy, with fake replica calls and a fake clock (no Ray, no
sleeps): input checked before sending, load spread by power-of-two-choices on in-flight
counts, QueueFull at capacity, views refreshed by age, every slot given back on every exit
(a result, a retry, a cancel, a cancelled or failing waiter)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.models import RetryPolicy, Task, TaskResult
from actors.router import Call, PoolRouter, PoolView
from cluster.errors import AgentNotFound, InputInvalid, QueueFull, ReplicaDied, TaskCancelled

SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


@dataclass(eq=False)
class FakeReplica:
    name: str


Answer = dict[str, Any] | BaseException


@dataclass(eq=False)
class FakeRef:
    """One call sent to a replica; the test answers it (a result or a Ray-like failure)."""

    replica: str
    task: dict[str, Any]
    cancelled: bool = False
    #: Set from the test's thread, awaited on the router's loop (a thread of its own for
    #: blocking callers).
    answer: concurrent.futures.Future[Answer] = field(default_factory=concurrent.futures.Future)

    def reply(self, answer: Answer | None = None) -> None:
        self.answer.set_result(answer if answer is not None else ok(self.task, self.replica))


class FakeCalls:
    """`ReplicaCalls` in memory: what was sent where, and what was cancelled. `auto`, when
    set, answers each call as it is sent."""

    def __init__(self) -> None:
        self.sent: list[FakeRef] = []
        self.auto: Callable[[FakeRef], Answer | None] | None = None
        self._sends = threading.Condition()

    def send(self, replica: FakeReplica, task: dict[str, Any]) -> FakeRef:
        ref = FakeRef(replica.name, task)
        with self._sends:
            self.sent.append(ref)
            self._sends.notify_all()
        answer = self.auto(ref) if self.auto else None
        if answer is not None:
            ref.reply(answer)
        return ref

    def wait_for_sends(self, count: int) -> list[FakeRef]:
        """Block until `count` calls were sent (the router's loop sends retries)."""
        with self._sends:
            assert self._sends.wait_for(lambda: len(self.sent) >= count, timeout=10)
            return list(self.sent)

    async def wait_async(self, ref: FakeRef, timeout_s: float) -> dict[str, Any]:
        answer = await asyncio.wrap_future(ref.answer)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def cancel(self, ref: FakeRef) -> None:
        ref.cancelled = True

    def per_replica(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ref in self.sent:
            counts[ref.replica] = counts.get(ref.replica, 0) + 1
        return counts


def ok(task: dict[str, Any], replica: str) -> dict[str, Any]:
    """What a replica answers: the attempt is the one the task carried."""
    return TaskResult(
        task_id=task["id"], status="succeeded", output="done", replica=replica,
        attempts=task["context"]["attempt"],
    ).model_dump()  # fmt: skip


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """Plays the supervisor's `get_pool`; `clock` is the monotonic clock of its process."""

    def __init__(self, replicas: int = 2, max_concurrency: int = 1, max_queued: int = 1) -> None:
        self.replicas = {f"r{i}": FakeReplica(f"r{i}") for i in range(1, replicas + 1)}
        self.max_concurrency = max_concurrency
        self.max_queued = max_queued
        self.fetches = 0
        self.clock: Any = lambda: 0.0
        self.retry = RetryPolicy(backoff_s=0)

    def __call__(self, capability: str, agent: str | None) -> PoolView:
        if capability != "test.echo":
            raise AgentNotFound(capability, ["test.echo"])
        self.fetches += 1
        return PoolView(
            agent_id="echo@1.0.0",
            replicas=dict(self.replicas),
            schemas={"test.echo": SCHEMA},
            max_concurrency=self.max_concurrency,
            max_queued=self.max_queued,
            timeout_s=5,
            retry=self.retry,
            fetched_at=self.clock(),
        )


_FAKES: list[FakeCalls] = []


@pytest.fixture(autouse=True)
def _answer_the_rest() -> Iterator[None]:
    """Calls a test left unanswered are answered after it, so their drivers end."""
    yield
    while _FAKES:
        for ref in _FAKES.pop().sent:
            if not ref.answer.done():
                ref.reply()


def router_for(source: FakeSource, ttl_s: float = 2.0) -> tuple[PoolRouter, FakeCalls, FakeClock]:
    calls, clock = FakeCalls(), FakeClock()
    router = PoolRouter(source, ttl_s, calls=calls, clock=clock, rng=random.Random(7))
    _FAKES.append(calls)
    return router, calls, clock


def task(text: str = "x") -> Task:
    return Task(capability="test.echo", input={"text": text})


def total_in_flight(router: PoolRouter, source: FakeSource) -> int:
    return sum(router.in_flight(name) for name in source.replicas)


# -- sending ------------------------------------------------------------------------------


def test_bad_input_is_refused_before_any_replica_sees_it() -> None:
    router, calls, _ = router_for(FakeSource())
    with pytest.raises(InputInvalid) as caught:
        router.submit(Task(capability="test.echo", input={"txt": "typo"}))
    assert any("'text' is a required property" in p for p in caught.value.problems)
    assert calls.sent == []


def test_unknown_capability_comes_from_the_source() -> None:
    router, _, _ = router_for(FakeSource())
    with pytest.raises(AgentNotFound, match=r"did you mean 'test\.echo'"):
        router.submit(Task(capability="test.ecko"))


def test_load_is_spread_by_in_flight_counts() -> None:
    source = FakeSource(replicas=2, max_concurrency=4, max_queued=0)
    router, calls, _ = router_for(source)
    for i in range(6):
        router.submit(task(str(i)))
    assert calls.per_replica() == {"r1": 3, "r2": 3}


def test_a_finished_call_frees_its_replica_for_the_next_ones() -> None:
    source = FakeSource(replicas=2, max_concurrency=4, max_queued=0)
    router, calls, _ = router_for(source)
    placed = [router.submit(task(str(i))) for i in range(4)]
    for call in placed:
        if call.replica == "r1":
            calls.sent[placed.index(call)].reply()
            assert router.result(call).ok
    assert (router.in_flight("r1"), router.in_flight("r2")) == (0, 2)
    assert {router.submit(task()).replica for _ in range(2)} == {"r1"}


def test_power_of_two_never_picks_the_busiest_replica_while_it_is_strictly_busiest() -> None:
    source = FakeSource(replicas=3, max_concurrency=100, max_queued=0)
    busy = source.replicas.pop("r3")
    source.replicas = {"r3": busy}
    router, _, clock = router_for(source)
    for _ in range(3):
        assert router.submit(task()).replica == "r3"
    source.replicas = {"r1": FakeReplica("r1"), "r2": FakeReplica("r2"), "r3": busy}
    clock.now += 3  # the view is stale: the new replicas are seen
    for _ in range(30):
        loads = {n: router.in_flight(n) for n in ("r1", "r2", "r3")}
        strictly_busiest = loads["r3"] > max(loads["r1"], loads["r2"])
        picked = router.submit(task()).replica
        if strictly_busiest:
            assert picked != "r3", loads
    assert total_in_flight(router, source) == 33


def test_queue_full_at_the_pools_capacity() -> None:
    source = FakeSource(replicas=2, max_concurrency=1, max_queued=1)
    router, calls, _ = router_for(source)
    for i in range(4):
        router.submit(task(str(i)))
    with pytest.raises(QueueFull) as caught:
        router.submit(task("one too many"))
    assert caught.value.retryable
    assert "echo@1.0.0" in str(caught.value)
    assert len(calls.sent) == 4


def test_view_is_cached_then_refreshed_after_its_ttl() -> None:
    source = FakeSource(max_concurrency=100)
    router, _, clock = router_for(source, ttl_s=2.0)
    router.submit(task("a"))
    clock.now += 2.0
    router.submit(task("b"))
    assert source.fetches == 1
    clock.now += 0.01
    router.submit(task("c"))
    assert source.fetches == 2


def test_view_age_is_read_on_the_callers_clock_not_the_supervisors() -> None:
    source = FakeSource(max_concurrency=100)
    router, _, clock = router_for(source, ttl_s=2.0)
    source.clock = lambda: clock.now + 3600  # that node booted an hour before this one
    router.submit(task("a"))
    clock.now += 2.5
    router.submit(task("b"))
    assert source.fetches == 2


async def test_submit_async_fetches_a_stale_view_and_sends() -> None:
    source = FakeSource(max_concurrency=100)
    router, calls, clock = router_for(source)
    placed = [await router.submit_async(task("a")), await router.submit_async(task("b"))]
    clock.now += 5
    placed.append(await router.submit_async(task("c")))
    assert (source.fetches, len(calls.sent)) == (2, 3)
    for ref in calls.sent:
        ref.reply()
    assert all([(await router.result_async(call)).ok for call in placed])


# -- receiving: every exit gives the slot back ---------------------------------------------


def test_a_result_gives_back_its_slot() -> None:
    source = FakeSource(replicas=1, max_concurrency=1, max_queued=0)
    router, calls, _ = router_for(source)
    call = router.submit(task())
    calls.sent[0].reply()
    assert router.result(call).output == "done"
    assert router.in_flight("r1") == 0
    assert not calls.sent[0].cancelled


async def test_cancelled_waiters_give_back_their_slots_and_stop_their_tasks() -> None:
    source = FakeSource(replicas=1, max_concurrency=1, max_queued=1)
    router, calls, _ = router_for(source)
    for round_ in range(10):  # five times the pool's capacity
        waiters = [
            asyncio.create_task(router.result_async(await router.submit_async(task(str(i)))))
            for i in range(2)
        ]
        await asyncio.sleep(0)  # both wait on their replica
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert router.in_flight("r1") == 0, f"round {round_}"
    assert all(ref.cancelled for ref in calls.sent)
    last = await router.submit_async(task("still runs"))
    calls.sent[-1].reply()
    assert (await router.result_async(last)).ok


async def test_a_waiter_that_times_out_stops_its_task() -> None:
    source = FakeSource(replicas=1, max_concurrency=1, max_queued=0)
    router, calls, _ = router_for(source)
    call = await router.submit_async(task())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):  # a step timeout around the wait
            await router.result_async(call)
    assert calls.sent[0].cancelled
    assert router.in_flight("r1") == 0


async def test_cancel_stops_the_task_frees_the_slot_and_tells_the_waiter() -> None:
    source = FakeSource(replicas=1, max_concurrency=1, max_queued=0)
    router, calls, _ = router_for(source)
    call = await router.submit_async(task())
    waiter = asyncio.create_task(router.result_async(call))
    await asyncio.sleep(0)
    assert router.cancel(call)
    assert calls.sent[0].cancelled
    assert router.in_flight("r1") == 0
    calls.sent[0].reply(RuntimeError("TaskCancelledError"))  # how Ray answers a cancelled ref
    with pytest.raises(TaskCancelled):
        await waiter
    assert not router.cancel(call)  # once only
    assert router.in_flight("r1") == 0


def test_cancel_before_anyone_waits_and_after_the_result() -> None:
    source = FakeSource(replicas=1, max_concurrency=2, max_queued=0)
    router, calls, _ = router_for(source)
    first, second = router.submit(task("a")), router.submit(task("b"))
    assert router.cancel(first)
    with pytest.raises(TaskCancelled):
        router.result(first)
    calls.sent[1].reply()
    assert router.result(second).ok
    assert not router.cancel(second)
    assert not calls.sent[1].cancelled
    assert router.in_flight("r1") == 0


def test_a_waiter_that_fails_gives_back_its_slot() -> None:
    source = FakeSource(replicas=1, max_concurrency=1, max_queued=0)
    router, calls, _ = router_for(source)
    call = router.submit(task())
    calls.sent[0].reply(RuntimeError("the replica could not build the agent"))
    with pytest.raises(RuntimeError):
        router.result(call)
    assert router.in_flight("r1") == 0
    router.submit(task("next"))  # not QueueFull


# -- retries ------------------------------------------------------------------------------


def test_a_task_whose_replica_died_runs_on_another_and_the_view_forgets_the_dead() -> None:
    source = FakeSource(replicas=2, max_concurrency=1, max_queued=0)
    router, calls, _ = router_for(source)
    calls.auto = lambda ref: (
        ReplicaDied("gone") if len(calls.sent) == 1 else ok(ref.task, ref.replica)
    )
    call = router.submit(task())
    first = calls.sent[0]
    other = "r2" if first.replica == "r1" else "r1"
    result = router.result(call)
    assert (result.ok, result.replica, result.attempts) == (True, other, 2)
    assert call.replica == other  # the call moved to the attempt that ran
    assert (router.in_flight("r1"), router.in_flight("r2")) == (0, 0)
    later = router.submit(task("later"))
    assert later.replica == other  # the dead replica is not picked again


def test_a_call_whose_replica_died_is_sent_again_before_anyone_reads_it() -> None:
    source = FakeSource(replicas=2, max_concurrency=1, max_queued=0)
    router, calls, _ = router_for(source)
    call = router.submit(task())
    calls.sent[0].reply(ReplicaDied("gone"))
    first, again = calls.wait_for_sends(2)  # nobody has called result() yet
    assert again.replica != first.replica
    assert router.in_flight(first.replica) == 0 and router.in_flight(again.replica) == 1
    again.reply()
    assert router.result(call).ok


async def test_a_replicas_death_costs_an_attempt_only_to_the_calls_that_had_started() -> None:
    source = FakeSource(replicas=1, max_concurrency=1, max_queued=3)
    router, calls, _ = router_for(source)
    placed = [await router.submit_async(task(str(i))) for i in range(4)]
    source.replicas = {"r2": FakeReplica("r2")}  # the supervisor's replacement
    calls.auto = lambda ref: ok(ref.task, ref.replica)
    for ref in reversed(calls.sent[:4]):  # the news arrives in any order
        ref.reply(ReplicaDied("gone"))
    results = [await router.result_async(c) for c in placed]
    assert [(r.ok, r.replica) for r in results] == [(True, "r2")] * 4
    # one slot: only the oldest call had started on r1; the three queued behind it lose nothing
    assert [r.attempts for r in results] == [2, 1, 1, 1]
    assert router.in_flight("r1") == router.in_flight("r2") == 0


def test_a_call_without_an_answer_is_cancelled_on_its_replica_and_retried() -> None:
    source = FakeSource(replicas=1, max_concurrency=1, max_queued=0)
    source.retry = RetryPolicy(max_attempts=2, backoff_s=0)
    router, calls, _ = router_for(source)
    calls.auto = lambda ref: TimeoutError("no answer")  # every attempt times out
    call = router.submit(task())
    result = router.result(call)
    assert not result.ok and result.error is not None
    assert result.error.type == "TaskTimeout"
    assert result.attempts == 2
    assert [ref.cancelled for ref in calls.sent] == [True, True]
    assert router.in_flight("r1") == 0


def test_the_call_type_is_what_callers_hold() -> None:
    router, _, _ = router_for(FakeSource())
    assert isinstance(router.submit(task()), Call)
