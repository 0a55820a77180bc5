"""Read-through `fetch` and acknowledged invalidation, against a real Valkey, without Ray."""

from __future__ import annotations

import gc
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.cache import CacheManager, shared_cache
from cluster.store import Store
from cluster.valkey import free_port, start_server
from tests.unit.cluster.test_cache import connect, eventually


@pytest.fixture
def stores(any_store_url: str, tmp_path: Path) -> Iterator[list[Store]]:
    """Three connections of one fresh tenant, standing in for three processes."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    opened = [connect(any_store_url, tmp_path, tenant) for _ in range(3)]
    yield opened
    keys = list(opened[0].redis.scan_iter(match=opened[0].key("*")))
    if keys:
        opened[0].redis.delete(*keys)
    for store in opened:
        store.close()


class Source:
    """The store behind a cache: a Redis string, read by `load`, which counts its calls."""

    def __init__(self, store: Store, name: str = "source") -> None:
        self.store, self.key, self.loads = store, store.key(name), 0

    def write(self, value: str | None) -> None:
        if value is None:
            self.store.redis.delete(self.key)
        else:
            self.store.redis.set(self.key, value)

    def load(self) -> str | None:
        self.loads += 1
        raw: str | None = self.store.redis.get(self.key)
        return raw


@pytest.fixture
def managers(stores: list[Store]) -> Iterator[list[CacheManager]]:
    made = [CacheManager(store) for store in stores]
    yield made
    for manager in made:
        manager.close()


def test_fetch_loads_once_then_serves_its_l1(managers: list[CacheManager]) -> None:
    source = Source(managers[0].store)
    source.write("v1")
    assert managers[0].fetch("k", source.load) == "v1"
    assert managers[0].running  # the first fetch started the listener
    assert managers[0].fetch("k", source.load) == "v1"
    assert source.loads == 1
    assert managers[0].hit_counts()["l1"] == (1, 1)


def test_nothing_there_is_never_cached(managers: list[CacheManager]) -> None:
    source = Source(managers[0].store)
    assert managers[0].fetch("k", source.load) is None
    source.write("v1")
    assert managers[0].fetch("k", source.load) == "v1"
    assert source.loads == 2


def test_another_process_is_served_from_l2_without_loading(managers: list[CacheManager]) -> None:
    first, second = Source(managers[0].store), Source(managers[1].store)
    first.write("v1")
    assert managers[0].fetch("k", first.load) == "v1"
    assert managers[1].fetch("k", second.load) == "v1"
    assert (first.loads, second.loads) == (1, 0)
    assert managers[1].hit_counts()["l2"] == (1, 0)


def test_an_invalidation_elsewhere_is_seen_as_soon_as_it_returns(
    managers: list[CacheManager],
) -> None:
    reader, writer = managers[0], managers[1]
    source = Source(reader.store)
    source.write("v1")
    assert reader.fetch("k", source.load) == "v1"
    assert reader.fetch("k", source.load) == "v1"  # from L1
    source.write("v2")
    writer.invalidate("k")  # returns once the reader's listener dropped its copy
    assert reader.fetch("k", source.load) == "v2"


def test_a_fill_racing_an_invalidation_never_reaches_l2(managers: list[CacheManager]) -> None:
    slow, writer, late = managers
    source = Source(slow.store)
    source.write("old")

    def load_then_change() -> str | None:
        value = source.load()  # "old", read before the change below
        source.write("new")
        writer.invalidate("k")
        return value

    assert slow.fetch("k", load_then_change) == "old"  # what it read, but kept nowhere
    assert late.fetch("k", Source(late.store).load) == "new"
    assert slow.fetch("k", source.load) == "new"


def test_invalidate_key_drops_that_key_only(managers: list[CacheManager]) -> None:
    reader, writer = managers[0], managers[1]
    star, plain = Source(reader.store, "star"), Source(reader.store, "plain")
    star.write("s1")
    plain.write("p1")
    assert reader.fetch("a*", star.load) == "s1"
    assert reader.fetch("ab", plain.load) == "p1"
    star.write("s2")
    plain.write("p2")
    writer.invalidate("a*")
    assert reader.fetch("a*", star.load) == "s2"
    assert reader.fetch("ab", plain.load) == "p1"  # "a*" is a name here, not a pattern


def test_a_listener_that_never_acknowledges_delays_a_change_by_the_ack_timeout_only(
    stores: list[Store], caplog: pytest.LogCaptureFixture
) -> None:
    writer = CacheManager(stores[0], ack_timeout_s=0.2)
    deaf = stores[1].redis.pubsub()
    deaf.subscribe(stores[1].key("cache-invalidate"))  # subscribed, but no manager behind it
    assert eventually(lambda: deaf.get_message(timeout=0.1) is not None)
    try:
        with caplog.at_level(logging.WARNING, logger="cluster.cache"):
            writer.invalidate("k")
        assert "0 of 1 listeners acknowledged a change within 0.2s" in caplog.text
    finally:
        deaf.close()


def test_fetch_does_not_answer_from_l1_while_its_listener_is_cut_off(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_server(tmp_path / "valkey", port)
    store = connect(url, tmp_path, "acme")
    cache = CacheManager(store)
    answer = {"value": "cached"}
    try:
        assert cache.fetch("k", lambda: answer["value"]) == "cached"
        server.kill()
        server.wait(10)
        answer["value"] = "from the store"  # stands in for the store read after an outage
        # Once the listener knows it may miss changes, every fetch goes past L1.
        assert eventually(lambda: cache.fetch("k", lambda: answer["value"]) == "from the store")
    finally:
        cache.close()
        store.close()
        if server.poll() is None:
            server.kill()


def test_a_manager_no_one_holds_stops_its_listener(stores: list[Store]) -> None:
    def listeners() -> int:
        return sum(t.name.startswith("dafnck-cache-") for t in threading.enumerate())

    before = listeners()
    manager: CacheManager | None = CacheManager(stores[0], namespace="dropped")
    assert manager is not None and manager.fetch("k", lambda: "v") == "v"
    assert listeners() == before + 1
    manager = None
    gc.collect()
    assert eventually(lambda: listeners() == before)


def test_shared_cache_is_one_manager_per_pool_tenant_and_namespace(stores: list[Store]) -> None:
    first = shared_cache(stores[0], "shared")
    assert shared_cache(stores[0].for_tenant(stores[0].tenant), "shared") is first
    assert shared_cache(stores[0], "other") is not first
    assert shared_cache(stores[0].for_tenant("elsewhere"), "shared") is not first
    assert shared_cache(stores[1], "shared") is not first  # another connection pool
