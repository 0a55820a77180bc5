"""Token buckets in the real session Valkey: shared by every process, per provider/model/tenant."""

from __future__ import annotations

import pytest

from cluster.errors import RateLimited
from cluster.llm.limits import RateLimiter
from cluster.llm.prices import Prices
from cluster.settings import Settings
from cluster.store import Store, connect_store

PRICES = Prices.model_validate({
    "limits": {"requests_per_minute": 1000, "tokens_per_minute": None},
    "providers": {"openai": {
        "limits": {"requests_per_minute": 2, "tokens_per_minute": 6000},
        "models": {"big": {"limits": {"requests_per_minute": 100, "tokens_per_minute": 1000}}},
    }},
})  # fmt: skip


async def test_two_replicas_share_one_request_bucket(store: Store, settings: Settings) -> None:
    other = connect_store(settings)  # another replica's own connection
    try:
        here, there = RateLimiter(store, PRICES), RateLimiter(other, PRICES)
        assert await here.try_acquire("openai", "small", 10) == 0
        assert await there.try_acquire("openai", "small", 10) == 0
        wait_s = await here.try_acquire("openai", "small", 10)
        assert 25 < wait_s <= 30  # 2 per minute: the next request in about 30 s
    finally:
        other.close()


async def test_buckets_are_per_model_and_per_tenant(store: Store) -> None:
    limiter = RateLimiter(store, PRICES)
    for _ in range(2):
        assert await limiter.try_acquire("openai", "small", 1) == 0
    assert await limiter.try_acquire("openai", "small", 1) > 0
    assert await limiter.try_acquire("openai", "other", 1) == 0
    assert (
        await RateLimiter(store.for_tenant("acme"), PRICES).try_acquire("openai", "small", 1) == 0
    )


async def test_tokens_per_minute_and_settling_the_real_count(store: Store) -> None:
    limiter = RateLimiter(store, PRICES)
    assert await limiter.try_acquire("openai", "big", 600) == 0
    assert await limiter.try_acquire("openai", "big", 600) > 0  # 400 left of 1000
    await limiter.settle("openai", "big", -500)  # the first call used 100, not 600
    assert await limiter.try_acquire("openai", "big", 600) == 0
    await limiter.settle("openai", "big", 2000)  # a call used far more than estimated
    wait_s = await limiter.try_acquire("openai", "big", 1)
    assert wait_s > 60  # the bucket is in debt: over a minute to refill


async def test_a_call_larger_than_the_bucket_waits_for_a_full_bucket(store: Store) -> None:
    limiter = RateLimiter(store, PRICES)
    assert await limiter.try_acquire("openai", "big", 50_000) == 0  # capped at the capacity


async def test_no_room_within_the_timeout_is_rate_limited(store: Store) -> None:
    limiter = RateLimiter(store, PRICES)
    await limiter.acquire("openai", "small", 1, timeout_s=1)
    await limiter.acquire("openai", "small", 1, timeout_s=1)
    with pytest.raises(RateLimited, match="openai model 'small'") as info:
        await limiter.acquire("openai", "small", 1, timeout_s=1)
    assert info.value.retryable and info.value.retry_after_s > 1


async def test_unlimited_buckets_never_wait(store: Store) -> None:
    limiter = RateLimiter(store, PRICES)
    for _ in range(5):
        assert await limiter.try_acquire("anthropic", "m", 10**9) == 0  # top-level: no tpm
