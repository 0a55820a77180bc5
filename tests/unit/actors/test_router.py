"""The caller-side router's sending half, with fake replica handles (no Ray): input checked
before sending, load spread by in-flight counts, QueueFull at capacity, views refreshed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from actors.models import RetryPolicy, Task
from actors.router import PoolRouter, PoolView
from cluster.errors import AgentNotFound, InputInvalid, QueueFull

SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


class FakeMethod:
    def __init__(self) -> None:
        self.sent: list[Task] = []

    def remote(self, task: Task) -> object:
        self.sent.append(task)
        return object()


class FakeReplica:
    def __init__(self) -> None:
        self.run = FakeMethod()


class FakeSource:
    """Plays the supervisor's `get_pool`; `clock` is the monotonic clock of its process."""

    def __init__(self, replicas: int = 2, max_concurrency: int = 1, max_queued: int = 1) -> None:
        self.replicas = {f"t/echo@1.0.0/{i}": FakeReplica() for i in range(1, replicas + 1)}
        self.max_concurrency = max_concurrency
        self.max_queued = max_queued
        self.fetches = 0
        self.clock = time.monotonic

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
            retry=RetryPolicy(),
            fetched_at=self.clock(),
        )

    def sent(self) -> dict[str, int]:
        return {name: len(r.run.sent) for name, r in self.replicas.items()}


def task(**data: Any) -> Task:
    return Task(capability="test.echo", input=data)


def test_bad_input_is_refused_before_any_replica_sees_it() -> None:
    source = FakeSource()
    router = PoolRouter(source)
    with pytest.raises(InputInvalid) as caught:
        router.submit(task(txt="typo"))
    assert any("'text' is a required property" in p for p in caught.value.problems)
    assert sum(source.sent().values()) == 0


def test_load_is_spread_by_in_flight_counts() -> None:
    source = FakeSource(replicas=2, max_concurrency=4, max_queued=0)
    router = PoolRouter(source)
    calls = [router.submit(task(text=str(i))) for i in range(6)]
    assert sorted(source.sent().values()) == [3, 3]
    assert {c.replica for c in calls} == set(source.replicas)


def test_queue_full_at_the_pools_capacity() -> None:
    source = FakeSource(replicas=2, max_concurrency=1, max_queued=1)
    router = PoolRouter(source)
    for i in range(4):
        router.submit(task(text=str(i)))
    with pytest.raises(QueueFull) as caught:
        router.submit(task(text="one too many"))
    assert caught.value.retryable
    assert "echo@1.0.0" in str(caught.value)
    assert sum(source.sent().values()) == 4


def test_unknown_capability_comes_from_the_source() -> None:
    with pytest.raises(AgentNotFound, match=r"did you mean 'test\.echo'"):
        PoolRouter(FakeSource()).submit(Task(capability="test.ecko"))


def test_view_is_cached_then_refreshed_after_its_ttl() -> None:
    source = FakeSource(max_concurrency=100)
    router = PoolRouter(source, ttl_s=0.2)
    router.submit(task(text="a"))
    router.submit(task(text="b"))
    assert source.fetches == 1
    time.sleep(0.3)
    router.submit(task(text="c"))
    assert source.fetches == 2


def test_view_is_refreshed_when_the_supervisor_runs_on_a_machine_with_another_clock() -> None:
    source = FakeSource(max_concurrency=100)
    source.clock = lambda: time.monotonic() + 3600  # that node booted an hour before this one
    router = PoolRouter(source, ttl_s=0.2)
    router.submit(task(text="a"))
    time.sleep(0.3)
    router.submit(task(text="b"))
    assert source.fetches == 2
