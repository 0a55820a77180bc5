"""A store at its maxmemory: every write is refused with StoreFull and nothing is lost."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.errors import DafnckError, StoreFull
from cluster.settings import load_settings
from cluster.store import Store, connect_store
from cluster.valkey import free_port, server_url, start_server

_MAXMEMORY = 2 * 1024 * 1024


@pytest.fixture
def full_store(tmp_path: Path) -> Iterator[tuple[Store, list[str]]]:
    """A Valkey with a 2 MiB maxmemory, filled until it refused; the keys it took."""
    port = free_port()
    proc = start_server(tmp_path / "valkey", port, password="pw", maxmemory=_MAXMEMORY)
    settings = load_settings(tenant="acme", state_dir=str(tmp_path))
    store = connect_store(settings, url=server_url(port, "pw"))
    kept: list[str] = []
    for start in range(0, 10_000, 200):  # pipelined: a round trip per 200 writes, not per write
        keys = [store.key("blob", str(i)) for i in range(start, start + 200)]
        pipe = store.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, "x" * 1024)
        results = pipe.execute(raise_on_error=False)
        kept += [key for key, result in zip(keys, results, strict=True) if result is True]
        if any(isinstance(result, StoreFull) for result in results):
            break
    else:
        pytest.fail("the store never filled up")
    # Freed buffers may let one more small write in: hold the limit well below what is used.
    store.redis.config_set("maxmemory", _MAXMEMORY // 2)
    yield store, kept
    store.close()
    proc.terminate()
    proc.wait(10)


def test_a_write_past_maxmemory_is_a_clear_retryable_error(
    full_store: tuple[Store, list[str]],
) -> None:
    store, _ = full_store
    with pytest.raises(StoreFull) as caught:
        store.redis.hset(store.key("agents"), "echo", "{}")
    error = caught.value
    assert isinstance(error, DafnckError) and error.retryable and error.status_code == 507
    assert "the store is full" in error.message and "maxmemory" in error.message
    assert error.to_dict()["type"] == "StoreFull"
    assert isinstance(error, redis.exceptions.OutOfMemoryError)  # old except clauses still see it
    again = pickle.loads(pickle.dumps(error))  # Ray carries it between processes
    assert isinstance(again, StoreFull) and again.message == error.message
    assert store.redis.hget(store.key("agents"), "echo") is None


def test_nothing_written_before_is_lost_or_evicted(full_store: tuple[Store, list[str]]) -> None:
    store, kept = full_store
    assert len(kept) > 100
    assert store.redis.mget(kept) == ["x" * 1024] * len(kept)


def test_a_refused_transaction_writes_none_of_its_commands(
    full_store: tuple[Store, list[str]],
) -> None:
    store, _ = full_store
    pipe = store.redis.pipeline(transaction=True)
    pipe.set(store.key("exec", "1"), "snapshot")
    pipe.xadd(store.key("exec", "1", "events"), {"type": "started"})
    with pytest.raises(StoreFull):
        pipe.execute()
    assert store.redis.exists(store.key("exec", "1"), store.key("exec", "1", "events")) == 0


async def test_async_writes_and_scripts_answer_store_full(
    full_store: tuple[Store, list[str]],
) -> None:
    store, _ = full_store
    client = store.async_redis()
    with pytest.raises(StoreFull):
        await client.xadd(store.key("events", "x"), {"a": "b"})
    with pytest.raises(StoreFull):
        await client.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, store.key("k"), "v")
    await client.aclose()


def test_freeing_space_lets_writes_in_again(full_store: tuple[Store, list[str]]) -> None:
    store, kept = full_store
    store.redis.delete(*kept[: len(kept) // 2])
    store.redis.config_set("maxmemory", _MAXMEMORY)
    store.redis.set(store.key("after"), "ok")
    assert store.redis.get(store.key("after")) == "ok"
