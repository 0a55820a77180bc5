"""The two-level cache against a real Valkey (and redis-server where present), without Ray."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def warm(cache: CacheManager, key: str, value: Any) -> None:
    """Read `key` until L1 serves it: a fill is skipped when a change message races it."""

    def served_from_l1() -> bool:
        assert cache.get(key) == value
        hits = cache.get_stats().l1.hits
        assert cache.get(key) == value
        return cache.get_stats().l1.hits == hits + 1

    assert eventually(served_from_l1)


#: A key a listener holds in L1 so that `drain` can see its listener catch up.
MARKER = "_marker"


def drain(listener: CacheManager, sender: CacheManager) -> None:
    """Return once `listener`'s thread has handled every change published before the call.

    `listener` must hold MARKER in L1 (`listener.set(MARKER, 0)`): `sender` changes it, and
    a listener handles messages in the order Redis sent them, so once MARKER is gone from
    its L1 everything sent earlier has been handled too."""
    size = listener.get_stats().l1.size
    assert size is not None  # L1's size is always known
    sender.set(MARKER, 1)
    assert eventually(lambda: listener.get_stats().l1.size == size - 1)


def connect(url: str, tmp_path: Path, tenant: str) -> Store:
    return connect_store(load_settings(tenant=tenant, state_dir=str(tmp_path)), url=url)


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
def pair(stores: list[Store]) -> Iterator[tuple[CacheManager, CacheManager]]:
    """Two started managers on two connections of the same tenant."""
    a, b = CacheManager(stores[0]).start(), CacheManager(stores[1]).start()
    yield a, b
    with ThreadPoolExecutor(2) as pool:  # each listener takes up to a poll to notice
        list(pool.map(CacheManager.close, (a, b)))


@pytest.fixture
def cache(pair: tuple[CacheManager, CacheManager]) -> CacheManager:
    return pair[0]


def l2_key(store: Store, key: str) -> str:
    return store.key("cache", key)


# -- one manager --------------------------------------------------------------------------


def test_set_then_get_round_trips_through_json(cache: CacheManager) -> None:
    cache.set("user:1", {"name": "ada", "roles": ("admin",)})
    assert cache.get("user:1") == {"name": "ada", "roles": ["admin"]}
    raw = cache.store.redis.get(l2_key(cache.store, "user:1"))
    assert json.loads(raw) == {"name": "ada", "roles": ["admin"]}


def test_missing_key_gives_the_default(cache: CacheManager) -> None:
    sentinel = object()
    assert cache.get("nope") is None
    assert cache.get("nope", sentinel) is sentinel


def test_values_live_under_the_tenant_prefix(cache: CacheManager, tenant: str) -> None:
    cache.set("k", 1)
    assert list(cache.store.redis.scan_iter(match="*cache:k")) == [f"dafnck:{tenant}:cache:k"]


def test_l2_ttl_is_set_with_px(cache: CacheManager) -> None:
    cache.set("short", 1, ttl_s=1.5)
    cache.set("forever", 1)
    assert 0 < cache.store.redis.pttl(l2_key(cache.store, "short")) <= 1500
    assert cache.store.redis.pttl(l2_key(cache.store, "forever")) == -1


def test_default_ttl_applies_when_set_has_none(stores: list[Store]) -> None:
    cache = CacheManager(stores[0], default_ttl_s=3.0)
    cache.set("k", 1)
    assert 2000 < cache.store.redis.pttl(l2_key(cache.store, "k")) <= 3000


def test_l2_entry_expires(stores: list[Store]) -> None:
    writer, reader = CacheManager(stores[0]), CacheManager(stores[1], l1_maxsize=0)
    writer.set("k", 1, ttl_s=0.2)
    assert reader.get("k") == 1
    assert eventually(lambda: reader.get("k") is None)


def test_l1_honours_a_per_entry_ttl_shorter_than_its_own(stores: list[Store]) -> None:
    cache = CacheManager(stores[0], l1_ttl_s=60)
    cache.set("k", "old", ttl_s=0.2)
    # Behind the cache's back, so only L1 expiry can reveal the new value.
    cache.store.redis.set(l2_key(cache.store, "k"), json.dumps("new"))
    assert cache.get("k") == "old"
    assert eventually(lambda: cache.get("k") == "new")  # a 60 s L1 copy would outlast this


def test_l1_default_ttl_bounds_every_entry(stores: list[Store]) -> None:
    cache = CacheManager(stores[0], l1_ttl_s=0.2)
    cache.set("k", "old")
    cache.store.redis.set(l2_key(cache.store, "k"), json.dumps("new"))
    assert cache.get("k") == "old"
    assert eventually(lambda: cache.get("k") == "new")


def test_stats_count_hits_misses_and_sizes_per_level(stores: list[Store]) -> None:
    writer, cache = CacheManager(stores[0]), CacheManager(stores[1])
    writer.set("a", 1)
    writer.set("b", 2)
    cache.get("a")  # L1 miss, L2 hit (fills L1)
    cache.get("a")  # L1 hit
    cache.get("a")  # L1 hit
    cache.get("zzz")  # L1 miss, L2 miss
    stats = cache.get_stats()
    assert (stats.l1.hits, stats.l1.misses, stats.l1.size) == (2, 2, 1)
    assert (stats.l2.hits, stats.l2.misses, stats.l2.size, stats.l2.errors) == (1, 1, 2, 0)
    assert stats.as_dict()["l1"] == {"hits": 2, "misses": 2, "size": 1, "errors": 0}


def test_an_l2_hit_fills_l1(stores: list[Store]) -> None:
    writer, cache = CacheManager(stores[0]), CacheManager(stores[1])
    writer.set("k", "v")
    assert cache.get("k") == "v"
    writer.store.redis.delete(l2_key(writer.store, "k"))  # without telling anyone
    assert cache.get("k") == "v"
    assert cache.get_stats().l1.hits == 1


def test_an_l2_fill_keeps_the_remaining_l2_ttl(stores: list[Store]) -> None:
    writer, cache = CacheManager(stores[0]), CacheManager(stores[1], l1_ttl_s=60)
    writer.set("k", "v", ttl_s=0.3)
    assert cache.get("k") == "v"
    assert eventually(lambda: cache.get("k") is None)  # L1 keeps it no longer than L2 did


def test_disabled_l1_always_reads_l2(stores: list[Store]) -> None:
    cache = CacheManager(stores[0], l1_maxsize=0)
    cache.set("k", 1)
    cache.get("k")
    cache.get("k")
    stats = cache.get_stats()
    assert (stats.l1.hits, stats.l1.size, stats.l2.hits) == (0, 0, 2)


def test_invalidate_pattern_drops_matching_keys_from_both_levels(cache: CacheManager) -> None:
    for key in ("user:1", "user:2", "team:1", "user"):
        cache.set(key, key)
    assert cache.invalidate("user:*") == 2
    assert cache.get("user:1") is None
    assert cache.get("user:2") is None
    assert cache.store.redis.exists(l2_key(cache.store, "user:1")) == 0
    assert cache.get("team:1") == "team:1"
    assert cache.get("user") == "user"
    assert cache.get_stats().l1.size == 2


def test_invalidate_uses_the_same_glob_syntax_in_l1_and_l2(cache: CacheManager) -> None:
    for key in ("a1", "a2", "a3", "b[1]"):
        cache.set(key, key)
    assert cache.invalidate("a[!2]") == 2
    assert cache.invalidate("b[1]") == 0  # fnmatch: a character class, so no literal match
    assert [cache.get(k) for k in ("a1", "a2", "a3", "b[1]")] == [None, "a2", None, "b[1]"]


def test_invalidate_an_exact_key(cache: CacheManager) -> None:
    cache.set("k", 1)
    cache.set("k2", 2)
    assert cache.invalidate("k") == 1
    assert (cache.get("k"), cache.get("k2")) == (None, 2)


def test_pluggable_serializer_is_used_for_l2(stores: list[Store]) -> None:
    def dumps(value: Any) -> str:
        return "v1:" + json.dumps(value)

    def loads(raw: str) -> Any:
        assert raw.startswith("v1:")
        return json.loads(raw[3:])

    writer = CacheManager(stores[0], dumps=dumps, loads=loads)
    reader = CacheManager(stores[1], dumps=dumps, loads=loads)
    writer.set("k", [1, 2])
    assert writer.store.redis.get(l2_key(writer.store, "k")) == "v1:[1, 2]"
    assert reader.get("k") == [1, 2]


def test_unserializable_value_writes_nothing(cache: CacheManager) -> None:
    with pytest.raises(TypeError):
        cache.set("k", object())
    assert cache.get("k") is None


def test_bad_settings_are_reported_together(store: Store) -> None:
    with pytest.raises(ConfigError) as caught:
        CacheManager(store, l1_maxsize=-1, l1_ttl_s=0)
    assert "l1_maxsize" in str(caught.value) and "l1_ttl_s" in str(caught.value)
    with pytest.raises(ConfigError, match="ttl_s"):
        CacheManager(store).set("k", 1, ttl_s=0)


# -- two processes ------------------------------------------------------------------------


def test_invalidation_reaches_another_managers_l1(pair: tuple[CacheManager, CacheManager]) -> None:
    a, b = pair
    a.set("user:1", "ada")
    warm(b, "user:1", "ada")
    a.invalidate("user:*")
    assert eventually(lambda: b.get("user:1") is None)
    assert b.get_stats().l1.size == 0


def test_set_elsewhere_replaces_the_stale_l1_copy(pair: tuple[CacheManager, CacheManager]) -> None:
    a, b = pair
    a.set("k", "v1")
    warm(b, "k", "v1")
    a.set("k", "v2")
    assert eventually(lambda: b.get("k") == "v2")


def test_a_manager_keeps_its_own_fresh_copy_after_set(
    pair: tuple[CacheManager, CacheManager],
) -> None:
    a, b = pair
    a.set("k", "v")
    a.set(MARKER, 0)
    drain(a, b)  # a's own message about "k" has come back
    assert a.get("k") == "v"
    assert a.get_stats().l1.hits == 1


def test_invalidation_does_not_cross_tenants(stores: list[Store]) -> None:
    other_store = stores[1].for_tenant(stores[1].tenant + "-other")
    with CacheManager(stores[0]) as a, CacheManager(other_store) as other:
        other.set("k", "theirs")
        other.set(MARKER, 0)
        a.set("k", "mine")
        a.invalidate("*")
        drain(other, CacheManager(other_store))
        assert other.get("k") == "theirs"
        assert other.get_stats().l1.hits == 1
        other.invalidate("*")


def test_a_fill_racing_a_remote_set_does_not_keep_the_old_value(stores: list[Store]) -> None:
    writer = CacheManager(stores[0])
    writer.set("k", "old")
    racing = threading.Event()

    def slow_loads(raw: str) -> Any:
        # Runs between b's L2 read and its L1 fill: the remote set lands right there.
        if racing.is_set():
            racing.clear()
            writer.set("k", "new")
            drain(b, writer)  # b's listener has heard of the set before b fills its L1
        return json.loads(raw)

    with CacheManager(stores[1], loads=slow_loads) as b:
        b.set(MARKER, 0)
        racing.set()
        assert b.get("k") == "old"  # read before the set
        assert b.get("k") == "new"


def test_close_stops_the_listener(pair: tuple[CacheManager, CacheManager]) -> None:
    a, b = pair
    witness = CacheManager(b.store).start()  # still listening when b no longer is

    def listeners() -> int:
        return sum(t.name.startswith("dafnck-cache-") for t in threading.enumerate())

    assert b.running
    before = listeners()
    b.close()
    assert not b.running
    assert listeners() == before - 1
    a.set("k", "v1")
    warm(b, "k", "v1")
    witness.set(MARKER, 0)
    a.set("k", "v2")
    drain(witness, a)  # the change went out and a listening manager has handled it
    assert b.get("k") == "v1"  # nobody told b: its thread is gone
    b.close()  # twice is fine
    witness.close()


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


def test_unreachable_store_raises_from_set_and_invalidate() -> None:
    store = unreachable_store()
    cache = CacheManager(store)
    with pytest.raises(StoreUnavailable) as caught:
        cache.set("k", 1)
    assert store.url in str(caught.value) and caught.value.retryable
    with pytest.raises(StoreUnavailable):
        cache.invalidate("k*")
    with pytest.raises(StoreUnavailable):
        cache.start()
    assert not cache.running


def test_unreachable_store_get_is_a_counted_miss() -> None:
    cache = CacheManager(unreachable_store())
    assert cache.get("k", "fallback") == "fallback"
    stats = cache.get_stats()
    assert (stats.l2.errors, stats.l2.hits, stats.l2.size) == (1, 0, None)


def test_listener_survives_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = start_server(tmp_path / "valkey", port)
    a_store, b_store = connect(url, tmp_path, "acme"), connect(url, tmp_path, "acme")
    a, b = CacheManager(a_store).start(), CacheManager(b_store).start()
    try:
        a.set("k", "v1")
        warm(b, "k", "v1")
        proc.kill()  # at once: a server shutting down still accepts (and b would resync)
        proc.wait(10)
        assert b.get("k") == "v1"  # L1 still serves while Redis is down
        assert b.get("other") is None
        assert b.get_stats().l2.errors == 1
        with pytest.raises(StoreUnavailable):
            a.set("k", "v2")
        proc = start_server(tmp_path / "valkey", port)
        # b resubscribes and clears its L1, then hears of new changes again.
        assert eventually(lambda: b.get_stats().l1.size == 0, timeout_s=5)
        assert b.get("k") == "v1"  # back from L2 (the AOF kept it)
        a.set("k", "v3")
        assert eventually(lambda: b.get("k") == "v3")
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
