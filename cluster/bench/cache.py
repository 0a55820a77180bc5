"""The cache in `dafnck bench --suite hub`: hit latency per level, and what it saves where
reads repeat (an API key checked on every request, registry lookups per task), as medians
in microseconds, cached next to uncached in the same run (rounds alternate, ABBA)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from actors.models import AgentRecord, AgentSpec
from actors.registry import AgentRegistry
from cluster.auth.keys import AUTH_SPACE, ApiKeys
from cluster.auth.models import Role
from cluster.cache import CacheManager
from cluster.errors import DafnckError
from cluster.store import Store

#: A small, typical cached answer (~200 bytes of JSON).
PAYLOAD = {"agent": "summarizer@1.0.0", "tokens": 128, "answer": "x" * 120, "tags": ["a", "b"]}
#: Agents in the bench registry: a small deployment's worth.
AGENTS = 20
ROUNDS = 4


def _samples_ns(call: Callable[[], Any], calls: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        started = clock()
        call()
        samples[i] = clock() - started
    return samples


def _median_us(get: Callable[[str], Any], key: str, calls: int) -> float:
    return statistics.median(_samples_ns(lambda: get(key), calls)) / 1000


def _abba_us(
    cached: Callable[[], Any], uncached: Callable[[], Any], calls: int
) -> tuple[float, float]:
    """Medians (cached, uncached) over alternating rounds, so drift hits both alike."""
    sides: dict[bool, list[int]] = {True: [], False: []}
    for round_ in range(ROUNDS):
        for side in (True, False) if round_ % 2 == 0 else (False, True):
            sides[side] += _samples_ns(cached if side else uncached, calls // ROUNDS)
    return statistics.median(sides[True]) / 1000, statistics.median(sides[False]) / 1000


def _result(name: str, value_us: float, baseline_us: float | None = None) -> dict[str, Any]:
    return {
        "suite": "hub",
        "name": name,
        "value": round(value_us, 3),
        "unit": "us",
        "baseline": None if baseline_us is None else round(baseline_us, 3),
        "ratio": None if not baseline_us else round(value_us / baseline_us, 4),
    }


def _uncached(store: Store, namespace: str) -> CacheManager:
    """A manager that always reads the store: no L1, no L2."""
    return CacheManager(store, namespace=namespace, l1_maxsize=0, l2=False)


@contextmanager
def _managers(*managers: CacheManager) -> Iterator[None]:
    try:
        yield
    finally:
        for manager in managers:
            manager.close()


def measure_cache(store: Store, quick: bool) -> list[dict[str, Any]]:
    """Hit latency per level, then API-key and registry lookups with and without the cache.

    Raises:
        StoreUnavailable: Redis cannot be reached.
        DafnckError: a measured call did not return what it should.
    """
    calls = 400 if quick else 10_000
    return _hits(store, quick) + _api_key(store, calls) + _registry(store, calls)


def _hits(store: Store, quick: bool) -> list[dict[str, Any]]:
    """Median `fetch` latency of an L1 hit and of an L2 hit (L1 off), in a throwaway namespace."""
    namespace = f"bench-cache-{uuid.uuid4().hex[:8]}"
    l1_calls, l2_calls = (20_000, 2_000) if quick else (100_000, 10_000)
    cache = CacheManager(store, namespace=namespace)
    l2_only = CacheManager(store, namespace=namespace, l1_maxsize=0)

    def load() -> dict[str, Any]:
        return PAYLOAD

    with _managers(cache, l2_only):
        try:
            if cache.fetch("answer", load) != PAYLOAD or l2_only.fetch("answer", load) != PAYLOAD:
                raise DafnckError("cache bench: a fetch did not return the value loaded")
            l1_us = _median_us(lambda key: cache.fetch(key, load), "answer", l1_calls)
            l2_us = _median_us(lambda key: l2_only.fetch(key, load), "answer", l2_calls)
            stats = l2_only.get_stats()
            if stats.l2.hits < l2_calls:
                raise DafnckError(f"cache bench: expected {l2_calls} L2 hits, got {stats.l2}")
        finally:
            cache.invalidate("answer")
            store.redis.delete(store.key(f"{namespace}-gen"))
    return [_result("cache_l1_hit_us", l1_us), _result("cache_l2_hit_us", l2_us)]


def _api_key(store: Store, calls: int) -> list[dict[str, Any]]:
    """`authenticate_api_key` (what every request with an API key runs) through the auth
    cache's L1, through L2 only, and straight from the store."""
    auth, ns = store.for_tenant(AUTH_SPACE), f"bench-auth-{uuid.uuid4().hex[:8]}"
    l1, l2 = CacheManager(auth, namespace=ns), CacheManager(auth, namespace=ns, l1_maxsize=0)
    none = _uncached(auth, ns + "-off")
    keys, tenant = ApiKeys(store, l1), f"bench-{uuid.uuid4().hex[:8]}"
    key_id, secret = keys.create_api_key(tenant, Role.VIEWER, "cache bench")
    with _managers(l1, l2, none):
        try:
            views = [ApiKeys(store, cache) for cache in (l1, l2, none)]
            if {view.authenticate_api_key(secret).key_id for view in views} != {key_id}:
                raise DafnckError("cache bench: a cached key did not authenticate as itself")
            l1_us, store_us = _abba_us(
                lambda: views[0].authenticate_api_key(secret),
                lambda: views[2].authenticate_api_key(secret),
                calls,
            )
            l2_us, l2_store_us = _abba_us(
                lambda: views[1].authenticate_api_key(secret),
                lambda: views[2].authenticate_api_key(secret),
                calls // 2,
            )
        finally:
            store.redis.hdel(store.for_tenant(tenant).key("auth", "apikeys"), key_id)
            store.redis.hdel(auth.key("apikeys"), key_id)
            l1.invalidate(f"key:{key_id}")
            auth.redis.delete(auth.key(f"{ns}-gen"))
    return [
        _result("auth_api_key_l1_us", l1_us, store_us),
        _result("auth_api_key_l2_us", l2_us, l2_store_us),
    ]


def _registry(store: Store, calls: int) -> list[dict[str, Any]]:
    """`AgentRegistry.get` and `resolve` (per task, message and A2A call) cached and not,
    over a registry of `AGENTS` agents in a throwaway tenant."""
    tenant = store.for_tenant(f"bench-{uuid.uuid4().hex[:8]}")
    cached = CacheManager(tenant, namespace="registrycache", l1_maxsize=4, l2=False)
    none = _uncached(tenant, "registrycache-off")
    registry, plain = AgentRegistry(tenant, cached), AgentRegistry(tenant, none)
    with _managers(cached, none):
        try:
            for i in range(AGENTS):
                spec = AgentSpec(name=f"a{i:02d}", version="1.0.0", capabilities=["bench.noop"],
                                 entrypoint="m:f", replicas={"min": 1, "max": 2})  # type: ignore[arg-type]  # fmt: skip
                registry.register_agent(AgentRecord(spec=spec))
            if registry.get("a07@1.0.0") != plain.get("a07@1.0.0"):
                raise DafnckError("cache bench: the cached registry disagrees with the store")
            get_us, get_store_us = _abba_us(
                lambda: registry.get("a07@1.0.0"), lambda: plain.get("a07@1.0.0"), calls
            )
            resolve_us, resolve_store_us = _abba_us(
                lambda: registry.resolve("a07"), lambda: plain.resolve("a07"), calls
            )
        finally:
            tenant.redis.delete(tenant.key("agents"), tenant.key("registrycache-gen"))
    return [
        _result("registry_get_us", get_us, get_store_us),
        _result("registry_resolve_us", resolve_us, resolve_store_us),
    ]


__all__ = ["measure_cache"]
