"""The two-level cache against a real Valkey (and redis-server where present), without Ray:
its levels, TTLs, counters, settings, listener and outages. Read-through coherence across
managers is in test_cache_fetch.py."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cluster.bench.cache import measure_cache
from cluster.cache import CacheManager
from cluster.errors import ConfigError, StoreUnavailable
from cluster.settings import load_settings
from cluster.store import Store, connect_store
from cluster.valkey import free_port, start_server


def eventually(check: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Poll `check` until it holds or the timeout passes; the last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def connect(url: str, tmp_path: Path, tenant: str) -> Store:
    return connect_store(load_settings(tenant=tenant, state_dir=str(tmp_path)), url=url)


class Counted:
    """A `load` that answers `value` (changeable) and counts its calls."""

    def __init__(self, value: Any) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stores(any_store_url: str, tmp_path: Path, tenant: str) -> Iterator[list[Store]]:
    """Two separate connections of one tenant, standing in for two processes."""
    opened = [connect(any_store_url, tmp_path, tenant) for _ in range(2)]
    yield opened
    keys = list(opened[0].redis.scan_iter(match=opened[0].key("*")))
    if keys:
        opened[0].redis.delete(*keys)
    for store in opened:
        store.close()


@pytest.fixture
def closing() -> Iterator[Callable[[CacheManager], CacheManager]]:
    """Managers made through it are closed after the test."""
    made: list[CacheManager] = []
    yield lambda manager: made.append(manager) or manager  # type: ignore[func-returns-value]
    for manager in made:
        manager.close()


def l2_key(store: Store, key: str) -> str:
    return store.key("cache", key)


# -- levels and TTLs ----------------------------------------------------------------------


def test_l2_holds_json_under_the_tenant_prefix_with_its_ttl(
    stores: list[Store], tenant: str, closing: Callable[[CacheManager], CacheManager]
) -> None:
    cache = closing(CacheManager(stores[0], l2_ttl_s=30))
    assert cache.fetch("k", Counted({"a": [1, 2]})) == {"a": [1, 2]}
    assert json.loads(stores[0].redis.get(f"dafnck:{tenant}:cache:k")) == {"a": [1, 2]}
    assert 0 < stores[0].redis.pttl(l2_key(stores[0], "k")) <= 30_000


def test_without_an_l2_ttl_l2_entries_do_not_expire(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    closing(CacheManager(stores[0])).fetch("k", Counted(1))
    assert stores[0].redis.pttl(l2_key(stores[0], "k")) == -1


def test_an_expired_l2_entry_is_loaded_again(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    writer = closing(CacheManager(stores[0], l2_ttl_s=0.2))
    reader = closing(CacheManager(stores[1], l1_maxsize=0))
    writer.fetch("k", Counted("old"))
    load = Counted("new")
    assert reader.fetch("k", load) == "old"  # from L2
    assert eventually(lambda: reader.fetch("k", load) == "new")


def test_l1_ttl_bounds_a_copy_no_one_invalidated(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    cache = closing(CacheManager(stores[0], l1_ttl_s=0.2, l2=False))
    load = Counted("old")
    assert cache.fetch("k", load) == "old"
    load.value = "new"  # changed behind the cache's back
    assert cache.fetch("k", load) == "old"
    assert eventually(lambda: cache.fetch("k", load) == "new")  # a 60 s copy would outlast this


def test_an_l2_hit_fills_l1(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    closing(CacheManager(stores[0])).fetch("k", Counted("v"))
    cache, load = closing(CacheManager(stores[1])), Counted("not used")
    assert cache.fetch("k", load) == "v"
    assert cache.fetch("k", load) == "v"
    assert load.calls == 0
    assert cache.hit_counts() == {"l1": (1, 1), "l2": (1, 0)}


def test_disabled_l1_always_reads_l2(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    cache, load = closing(CacheManager(stores[0], l1_maxsize=0)), Counted("v")
    for _ in range(3):
        assert cache.fetch("k", load) == "v"
    assert load.calls == 1
    assert cache.hit_counts() == {"l1": (0, 3), "l2": (2, 1)}


def test_without_l2_nothing_is_written_to_redis(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    cache, load = closing(CacheManager(stores[0], l2=False)), Counted("v")
    assert cache.fetch("k", load) == cache.fetch("k", load) == "v"
    cache.invalidate("k")
    assert cache.fetch("k", load) == "v"
    assert load.calls == 2
    assert list(stores[0].redis.scan_iter(match=stores[0].key("*"))) == []


def test_stats_count_hits_misses_and_sizes_per_level(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    cache = closing(CacheManager(stores[0]))
    cache.fetch("a", Counted(1))  # L1 miss, L2 miss
    cache.fetch("a", Counted(1))  # L1 hit
    cache.fetch("b", Counted(None))  # L1 miss, L2 miss, nothing cached
    stats = cache.get_stats()
    assert (stats.l1.hits, stats.l1.misses, stats.l1.size) == (1, 2, 1)
    assert (stats.l2.hits, stats.l2.misses, stats.l2.size, stats.l2.errors) == (0, 2, 1, 0)


def test_a_pluggable_serializer_is_used_for_l2(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    def dumps(value: Any) -> str:
        return json.dumps({"wrapped": value})

    def loads(raw: str) -> Any:
        return json.loads(raw)["wrapped"]

    closing(CacheManager(stores[0], dumps=dumps, loads=loads)).fetch("k", Counted([1]))
    assert json.loads(stores[0].redis.get(l2_key(stores[0], "k"))) == {"wrapped": [1]}
    reader = closing(CacheManager(stores[1], dumps=dumps, loads=loads))
    assert reader.fetch("k", Counted("not used")) == [1]


def test_an_unserializable_value_writes_nothing(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    cache = closing(CacheManager(stores[0]))
    with pytest.raises(TypeError):
        cache.fetch("k", Counted({1, 2}))
    assert stores[0].redis.get(l2_key(stores[0], "k")) is None
    assert cache.get_stats().l1.size == 0


def test_bad_settings_are_reported_together(stores: list[Store]) -> None:
    with pytest.raises(ConfigError) as caught:
        CacheManager(stores[0], l1_maxsize=-1, l1_ttl_s=0, l2_ttl_s=0, ack_timeout_s=-1)
    for name in ("l1_maxsize", "l1_ttl_s", "l2_ttl_s", "ack_timeout_s"):
        assert name in caught.value.message


# -- the listener -------------------------------------------------------------------------


def listeners() -> int:
    return sum(t.name.startswith("dafnck-cache-") for t in threading.enumerate())


def test_an_invalidation_does_not_cross_tenants(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    other_store = stores[1].for_tenant(stores[1].tenant + "-other")
    mine, theirs = closing(CacheManager(stores[0])), closing(CacheManager(other_store))
    mine.fetch("k", Counted("mine"))
    load = Counted("theirs")
    theirs.fetch("k", load)
    mine.invalidate("k")
    assert theirs.fetch("k", load) == "theirs"
    assert (load.calls, theirs.hit_counts()["l1"][0]) == (1, 1)
    other_store.redis.delete(other_store.key("cache", "k"))


def test_close_stops_the_listener_and_its_l1(
    stores: list[Store], closing: Callable[[CacheManager], CacheManager]
) -> None:
    before = listeners()
    cache, load = closing(CacheManager(stores[0], l2=False)), Counted("v")
    cache.fetch("k", load)
    assert cache.running and listeners() == before + 1
    cache.close()
    assert not cache.running and listeners() == before
    cache.fetch("k", load)  # no one would tell it of changes now: it reads the store
    assert (load.calls, cache.running) == (2, False)
    cache.close()  # twice is fine


# -- outages ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable_store() -> Store:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    client = redis.Redis.from_url(
        url, socket_connect_timeout=0.2, socket_timeout=0.2, decode_responses=True
    )
    return Store(client, url, "acme")


def test_an_unreachable_store_fails_invalidate_and_start_naming_it() -> None:
    store = unreachable_store()
    cache = CacheManager(store)
    with pytest.raises(StoreUnavailable) as caught:
        cache.invalidate("k")
    assert store.url in str(caught.value) and caught.value.retryable
    with pytest.raises(StoreUnavailable):
        cache.start()
    assert not cache.running


def test_an_unreachable_l2_is_a_counted_error_and_the_load_answers() -> None:
    cache = CacheManager(unreachable_store())
    load = Counted("from the store")
    assert cache.fetch("k", load) == cache.fetch("k", load) == "from the store"
    stats = cache.get_stats()
    assert (load.calls, stats.l1.hits, stats.l2.errors, stats.l2.size) == (2, 0, 2, None)


def test_listener_survives_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = start_server(tmp_path / "valkey", port)
    a_store, b_store = connect(url, tmp_path, "acme"), connect(url, tmp_path, "acme")
    a, b = CacheManager(a_store, l2=False), CacheManager(b_store, l2=False)
    load = Counted("v1")
    try:
        b.fetch("k", load)
        proc.kill()  # at once: a server shutting down still accepts (and b would resync)
        proc.wait(10)
        assert eventually(lambda: not b.peek("k")[0])  # cut off: L1 is not served
        proc = start_server(tmp_path / "valkey", port)
        # b resubscribes (clearing its L1) and serves L1 again...
        assert eventually(lambda: b.fetch("k", load) == "v1" and b.peek("k")[0], timeout_s=5)
        load.value = "v2"
        a.invalidate("k")  # ...and hears of changes again
        assert b.fetch("k", load) == "v2"
        assert b.running
    finally:
        a.close()
        b.close()
        a_store.close()
        b_store.close()
        proc.terminate()
        proc.wait(10)


# -- the bench ----------------------------------------------------------------------------


def test_measure_cache_reports_hits_and_lookups_with_and_without_the_cache(store: Store) -> None:
    results = measure_cache(store, quick=True)
    assert [r["name"] for r in results] == [
        "cache_l1_hit_us",
        "cache_l2_hit_us",
        "auth_api_key_l1_us",
        "auth_api_key_l2_us",
        "registry_get_us",
        "registry_resolve_us",
    ]
    for row in results:
        assert row.keys() == {"suite", "name", "value", "unit", "baseline", "ratio"}
        assert (row["suite"], row["unit"]) == ("hub", "us")
        assert row["value"] > 0
        compared = row["name"] not in ("cache_l1_hit_us", "cache_l2_hit_us")
        assert (row["baseline"] is not None, row["ratio"] is not None) == (compared, compared)
    # Nothing left behind but acknowledgement lists on their way out.
    assert [k for k in store.redis.scan_iter(match="*") if store.redis.ttl(k) == -1] == []
