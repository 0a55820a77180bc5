"""Cluster-wide rate limits on LLM calls: token buckets in Redis, one per provider, model
and tenant, shared by every replica on every node.

Each bucket pair (requests, tokens) is one Lua script call, timed by the Redis server's
own clock (`TIME`), so replicas on machines whose clocks disagree still share one rate.
A call takes one request and its estimated tokens; when the real count is known, the
difference is settled (the bucket may go below zero, which makes later callers wait).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from cluster.errors import RateLimited
from cluster.llm.prices import Prices
from cluster.store import Store

#: KEYS: requests bucket, tokens bucket. ARGV: mode (take | settle), requests per minute,
#: tokens per minute (0: unlimited), tokens. Returns milliseconds to wait (0: taken).
_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rcap, tcap, need = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function level(key, cap)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local lvl, ts = tonumber(v[1]), tonumber(v[2])
  if lvl == nil then return cap end
  return math.min(cap, lvl + (now - ts) * cap / 60000)
end
local function put(key, lvl)
  redis.call('HSET', key, 'level', tostring(lvl), 'ts', tostring(now))
  redis.call('PEXPIRE', key, 120000)
end
local rl, tl = 0, 0
if rcap > 0 then rl = level(KEYS[1], rcap) end
if tcap > 0 then tl = level(KEYS[2], tcap) end
if ARGV[1] == 'settle' then
  if tcap > 0 then put(KEYS[2], tl - need) end
  return 0
end
if tcap > 0 and need > tcap then need = tcap end
local wait = 0
if rcap > 0 and rl < 1 then wait = math.max(wait, (1 - rl) * 60000 / rcap) end
if tcap > 0 and tl < need then wait = math.max(wait, (need - tl) * 60000 / tcap) end
if wait > 0 then return math.ceil(wait) end
if rcap > 0 then put(KEYS[1], rl - 1) end
if tcap > 0 then put(KEYS[2], tl - need) end
return 0
"""

#: Longest single sleep while waiting, so a bucket refilled by a settle is noticed soon.
_MAX_SLEEP_S = 1.0


class RateLimiter:
    """Waits for room in the (provider, model) buckets of the store's tenant."""

    def __init__(self, store: Store, prices: Prices) -> None:
        self.store = store
        self.prices = prices
        self._scripts: dict[int, Any] = {}

    def _script(self) -> Any:
        client = self.store.async_redis()
        if id(client) not in self._scripts:
            self._scripts = {id(client): client.register_script(_BUCKET_LUA)}
        return self._scripts[id(client)]

    def _call_args(self, provider: str, model: str, mode: str, tokens: int) -> dict[str, Any]:
        limits = self.prices.limits_for(provider, model)
        keys = [self.store.key("llm", "bucket", provider, model, kind) for kind in ("rpm", "tpm")]
        argv = [mode, limits.requests_per_minute or 0, limits.tokens_per_minute or 0, tokens]
        return {"keys": keys, "args": argv}

    async def try_acquire(self, provider: str, model: str, tokens: int) -> float:
        """Take one request and `tokens` if both buckets have them; else the seconds to wait."""
        wait_ms = await self._script()(**self._call_args(provider, model, "take", max(tokens, 0)))
        return int(wait_ms) / 1000

    async def acquire(self, provider: str, model: str, tokens: int, timeout_s: float) -> float:
        """Wait until the buckets have room; returns the seconds waited.

        Raises:
            RateLimited: no room within `timeout_s` (retryable).
        """
        started = time.monotonic()
        while True:
            wait_s = await self.try_acquire(provider, model, tokens)
            waited = time.monotonic() - started
            if wait_s <= 0:
                return waited
            if waited + wait_s > timeout_s:
                raise RateLimited(
                    f"rate limit of {provider} model {model!r} for tenant "
                    f"{self.store.tenant!r}: no room for {tokens} tokens within {timeout_s:g}s",
                    wait_s,
                )
            # Jitter, so replicas waiting on one bucket do not all retry at the same instant.
            await asyncio.sleep(min(wait_s, _MAX_SLEEP_S) * random.uniform(1.0, 1.2))

    async def settle(self, provider: str, model: str, extra_tokens: int, pipe: Any = None) -> None:
        """Charge the tokens a call used beyond its estimate (a negative number gives back);
        with `pipe`, queued on that pipeline (a MULTI the caller executes) instead."""
        if extra_tokens:
            args = self._call_args(provider, model, "settle", extra_tokens)
            await self._script()(**args, client=pipe) if pipe is not None else await self._script()(
                **args
            )


__all__ = ["RateLimiter"]
