"""Cache hit latency for `dafnck bench --suite hub`: median L1 and L2 hits in microseconds."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from cluster.cache import CacheManager
from cluster.errors import DafnckError
from cluster.store import Store

#: A small, typical cached answer (~200 bytes of JSON).
PAYLOAD = {"agent": "summarizer@1.0.0", "tokens": 128, "answer": "x" * 120, "tags": ["a", "b"]}


def _median_us(get: Callable[[str], Any], key: str, calls: int) -> float:
    clock = time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        started = clock()
        get(key)
        samples[i] = clock() - started
    return statistics.median(samples) / 1000


def _result(name: str, value_us: float) -> dict[str, Any]:
    return {
        "suite": "hub",
        "name": name,
        "value": round(value_us, 3),
        "unit": "us",
        "baseline": None,
        "ratio": None,
    }


def measure_cache(store: Store, quick: bool) -> list[dict[str, Any]]:
    """Median latency of an L1 hit and of an L2 hit (L1 off), in a throwaway namespace.

    Raises:
        StoreUnavailable: Redis cannot be reached.
        DafnckError: a measured get did not return the cached value.
    """
    namespace = f"bench-cache-{uuid.uuid4().hex[:8]}"
    l1_calls, l2_calls = (20_000, 2_000) if quick else (100_000, 10_000)
    with CacheManager(store, namespace=namespace) as cache:
        l2_only = CacheManager(store, namespace=namespace, l1_maxsize=0)
        try:
            cache.set("answer", PAYLOAD)
            if cache.get("answer") != PAYLOAD or l2_only.get("answer") != PAYLOAD:
                raise DafnckError("cache bench: a get did not return the value just set")
            l1_us = _median_us(cache.get, "answer", l1_calls)
            l2_us = _median_us(l2_only.get, "answer", l2_calls)
            stats = l2_only.get_stats()
            if stats.l2.hits < l2_calls:
                raise DafnckError(f"cache bench: expected {l2_calls} L2 hits, got {stats.l2}")
        finally:
            cache.invalidate("*")
    return [_result("cache_l1_hit_us", l1_us), _result("cache_l2_hit_us", l2_us)]


__all__ = ["measure_cache"]
