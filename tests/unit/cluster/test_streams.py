"""Redis Streams mechanics on real servers (Valkey, and redis-server where present):
append with retention, group reading with reclaim and dead letters, and paged history."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from cluster.errors import SpecInvalid, StoreUnavailable
from cluster.settings import load_settings
from cluster.store import Store, connect_store
from cluster.streams import (
    DEAD_DELIVERIES,
    DEAD_ID,
    DEAD_REASON,
    DEAD_STREAM,
    GroupReader,
    after,
    append,
    append_many,
    at_ms,
    history,
    last_id,
)
from tests.unit.waiting import idle_past, until_some


@pytest.fixture
async def store(any_store_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A throwaway tenant on each server; its keys are removed after the test."""
    settings = load_settings(tenant=f"t{uuid.uuid4().hex[:8]}", state_dir=str(tmp_path))
    store = connect_store(settings, url=any_store_url)
    yield store
    await store.async_redis().aclose()
    keys = store.redis.keys(store.key("*"))
    if keys:
        store.redis.delete(*keys)
    store.close()


def reader(store: Store, consumer: str, **options: int) -> GroupReader:
    return GroupReader(store, store.key("s"), "g", consumer, **options)  # type: ignore[arg-type]


async def test_append_then_read_and_ack(store: Store) -> None:
    key = store.key("s")
    entry = await append(store, key, {"n": "1"}, maxlen=100)
    a = reader(store, "a")
    got = await a.read(count=10)
    assert [(d.stream, d.id, d.fields, d.delivery_count) for d in got] == [
        (key, entry, {"n": "1"}, 1)
    ]
    assert store.redis.xpending(key, "g")["pending"] == 1
    assert await a.ack(entry) == 1
    assert store.redis.xpending(key, "g")["pending"] == 0
    assert await a.read(count=10) == []


async def test_entries_arrive_in_order_across_batches(store: Store) -> None:
    ids = await append_many(
        store, [(store.key("s"), {"n": str(i)}) for i in range(50)], maxlen=1000
    )
    a = reader(store, "a")
    seen = []
    while batch := await a.read(count=7):
        seen += batch
    assert [d.fields["n"] for d in seen] == [str(i) for i in range(50)]
    assert [d.id for d in seen] == ids


async def test_append_many_writes_to_several_streams(store: Store) -> None:
    ids = await append_many(
        store,
        [
            (store.key("x"), {"v": "1", "w": "é"}),
            (store.key("y"), {"v": "2"}),
            (store.key("x"), {"v": "3"}),
        ],
        maxlen=10,
    )
    assert store.redis.xrange(store.key("x")) == [
        (ids[0], {"v": "1", "w": "é"}),
        (ids[2], {"v": "3"}),
    ]
    assert store.redis.xrange(store.key("y")) == [(ids[1], {"v": "2"})]
    assert await append_many(store, [], maxlen=10) == []


async def test_append_many_loads_its_script_after_a_flush(store: Store) -> None:
    await append_many(store, [(store.key("x"), {"v": "1"})], maxlen=10)
    store.redis.script_flush()
    await append_many(store, [(store.key("x"), {"v": "2"})], maxlen=10)
    assert [f["v"] for _, f in store.redis.xrange(store.key("x"))] == ["1", "2"]


async def test_unacked_entry_is_reclaimed_by_another_reader(store: Store) -> None:
    entry = await append(store, store.key("s"), {"job": "x"}, maxlen=100)
    a, b = reader(store, "a", claim_idle_ms=100), reader(store, "b", claim_idle_ms=100)
    assert [d.id for d in await a.read()] == [entry]  # a "dies" without acknowledging
    assert await b.read() == []  # not idle long enough yet
    got = await until_some(b.read, what="the reclaimed entry")
    assert [(d.id, d.fields, d.delivery_count) for d in got] == [(entry, {"job": "x"}, 2)]
    await b.ack(entry)
    assert store.redis.xpending(store.key("s"), "g")["pending"] == 0  # nothing to reclaim
    assert await a.read() == []  # acknowledged: never delivered again


async def test_entry_is_dead_lettered_after_max_deliveries(store: Store) -> None:
    key = store.key("s")
    entry = await append(store, key, {"job": "poison"}, maxlen=100)
    a, b = (
        reader(store, "a", claim_idle_ms=50, max_deliveries=2),
        reader(store, "b", claim_idle_ms=50, max_deliveries=2),
    )
    assert len(await a.read()) == 1
    await idle_past(store.redis, key, "g", 50)
    assert [d.delivery_count for d in await b.read()] == [2]
    await idle_past(store.redis, key, "g", 50)
    assert await a.read() == []  # a third delivery would exceed the limit
    dead = store.redis.xrange(f"{key}:dead")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields["job"] == "poison"
    assert (fields[DEAD_ID], fields[DEAD_STREAM], fields[DEAD_DELIVERIES]) == (entry, key, "2")
    assert "2 deliveries" in fields[DEAD_REASON]
    assert store.redis.xpending(key, "g")["pending"] == 0


async def test_dead_letter_on_demand(store: Store) -> None:
    await append(store, store.key("s"), {"bad": "1"}, maxlen=100)
    a = reader(store, "a")
    (delivery,) = await a.read()
    await a.dead_letter(delivery, "malformed")
    assert store.redis.xrange(store.key("s:dead"))[0][1][DEAD_REASON] == "malformed"
    assert store.redis.xpending(store.key("s"), "g")["pending"] == 0


async def test_retention_trims_the_oldest(store: Store) -> None:
    key = store.key("s")
    ids = await append_many(store, [(key, {"n": str(i)}) for i in range(1000)], maxlen=100)
    length = store.redis.xlen(key)
    assert 100 <= length < 300  # MAXLEN ~ trims whole nodes
    assert await last_id(store, key) == ids[-1]
    assert store.redis.xrange(key, count=1)[0][0] != ids[0]


async def test_group_start_new_only_or_everything(store: Store) -> None:
    key = store.key("s")
    await append(store, key, {"n": "old"}, maxlen=100)
    new_only = GroupReader(store, key, "late", "a")
    await new_only.ensure_group("$")
    await new_only.ensure_group("$")  # BUSYGROUP is not an error
    await append(store, key, {"n": "new"}, maxlen=100)
    assert [d.fields["n"] for d in await new_only.read()] == ["new"]
    assert [d.fields["n"] for d in await reader(store, "a").read()] == ["old", "new"]


async def test_read_waits_for_an_entry(store: Store) -> None:
    a = reader(store, "a")
    assert await asyncio.wait_for(a.read(block_ms=None), 5) == []  # answers at once

    async def later() -> None:
        await asyncio.sleep(0.2)  # lets the read below start waiting first
        await append(store, store.key("s"), {"n": "1"}, maxlen=10)

    task = asyncio.create_task(later())
    got = await a.read(block_ms=3000)  # a read that did not wait would see nothing
    await task
    assert [d.fields for d in got] == [{"n": "1"}]


async def test_reader_recreates_a_deleted_stream_and_group(store: Store) -> None:
    a = reader(store, "a")
    await a.ensure_group()
    store.redis.delete(store.key("s"))
    assert await a.read() == []
    await append(store, store.key("s"), {"n": "1"}, maxlen=10)
    assert [d.fields for d in await a.read()] == [{"n": "1"}]


async def test_history_pages_by_id_both_ways(store: Store) -> None:
    key = store.key("s")
    ids = await append_many(store, [(key, {"n": str(i)}) for i in range(20)], maxlen=1000)
    pages, start = [], "-"
    while True:
        page = await history(store, key, start=start, count=10)
        pages.append([i for i, _ in page.entries])
        if page.next is None:
            break
        start = after(page.next)
    assert [len(p) for p in pages] == [10, 10]  # the last page is full yet says "no more"
    assert [i for page_ids in pages for i in page_ids] == ids
    newest = await history(store, key, count=10, reverse=True)
    assert [i for i, _ in newest.entries] == ids[::-1][:10]
    older = await history(store, key, end=after(newest.next or ""), count=10, reverse=True)
    assert [i for i, _ in older.entries] == ids[::-1][10:20]


async def test_history_by_time(store: Store) -> None:
    key = store.key("s")
    for entry in ("1000-0", "2000-0", "2000-1", "3000-0"):
        store.redis.xadd(key, {"ms": entry.split("-")[0]}, id=entry)
    page = await history(store, key, start=at_ms(2000), end=after(at_ms(3000)))
    assert [f["ms"] for _, f in page.entries] == ["2000", "2000"]
    assert page.next is None


async def test_history_past_either_end_of_the_id_space_is_empty(store: Store) -> None:
    key = store.key("s")
    await append(store, key, {"n": "1"}, maxlen=10)
    before_all = await history(store, key, end=after("0-0"), reverse=True)
    last = f"{2**64 - 1}-{2**64 - 1}"
    after_all = await history(store, key, start=after(last))
    assert before_all.entries == [] and after_all.entries == []


async def test_bad_limits_are_refused_together() -> None:
    fake = Store(redis.Redis(), "redis://127.0.0.1:1/0", "t")
    with pytest.raises(SpecInvalid) as info:
        GroupReader(fake, "k", "g", "c", claim_idle_ms=0, max_deliveries=0)
    assert "claim_idle_ms" in str(info.value) and "max_deliveries" in str(info.value)


async def test_outage_is_a_retryable_store_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    options = {"socket_connect_timeout": 0.2, "socket_timeout": 0.2, "decode_responses": True}
    dead = Store(redis.Redis.from_url(url, **options), url, "t", options)
    with pytest.raises(StoreUnavailable) as info:
        await append(dead, dead.key("s"), {"n": "1"}, maxlen=10)
    assert info.value.retryable and str(port) in str(info.value)
    with pytest.raises(StoreUnavailable):
        await GroupReader(dead, dead.key("s"), "g", "c").read()
