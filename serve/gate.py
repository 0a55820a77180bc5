"""A request's security on the event loop: who is calling, how often, and the audit entry.

`cluster.auth.Security` does these with redis-py's blocking client: in the API each call
held a worker thread through its round trips, on every request. `Gate` answers the
credential from the auth cache (no I/O) when it can, counts both rate limits in one round
trip (one script over the windows `limits` keeps) and writes audit entries with the
store's `redis.asyncio` client, over the very keys, windows and streams `cluster.auth`
uses (`tests/unit/serve/test_gate.py` checks the two against each other on one Valkey).
The rare paths (a credential not cached yet, counting a failed authentication) call
`Security` in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import limits
import redis
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from cluster.auth.keys import AUTH_SPACE
from cluster.auth.limits import KEY_PREFIX as LIMITS_PREFIX
from cluster.auth.models import AuditOutcome, Principal, SecurityConfig
from cluster.auth.security import Security
from cluster.errors import RateLimited, StoreUnavailable
from cluster.logs import current as log_ids
from cluster.store import Store, redacted

#: `limits`' acquire_moving_window.lua for each window in KEYS in turn (ARGV: the time,
#: then each window's limit and expiry): stops at the first full window and answers its
#: 1-based index, 0 when every window took its hit. Windows before it keep their hit, as
#: when `RateLimits` hits them one call at a time.
_MOVING_WINDOWS = """
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1])
    local entry = redis.call('lindex', key, limit - 1)
    if entry and tonumber(entry) >= now - expiry then
        return i
    end
    redis.call('lpush', key, ARGV[1])
    redis.call('ltrim', key, 0, limit - 1)
    redis.call('expire', key, expiry)
end
return 0
"""


class Gate:
    """`Security`'s per-request checks, awaited. One per API replica."""

    def __init__(self, security: Security, store: Store, config: SecurityConfig) -> None:
        self.security = security
        self.store = store
        self.config = config
        self._index = store.for_tenant(AUTH_SPACE).key("apikeys")
        self._per_key = _item(config.rate_per_key)
        self._per_tenant = _item(config.rate_per_tenant)
        self._limiters: dict[int, RateLimiter] = {}
        self._scripts: dict[int, Any] = {}

    # -- who ----------------------------------------------------------------------------

    async def authenticate(self, credential: str) -> Principal:
        """As `Security.authenticate`: answered from the auth cache when it holds what the
        credential needs (`Security.authenticate_cached`: no I/O, no thread), else by
        `Security.authenticate` in a worker thread, which fills the cache.

        Raises: Unauthorized, StoreUnavailable.
        """
        found = self.security.authenticate_cached(credential)
        if found is not None:
            return found
        return await asyncio.to_thread(self.security.authenticate, credential)

    async def failed(self, credential: str | None, source: str) -> None:
        """Count a 401 (never raises: a store that is down does not change the 401)."""
        await asyncio.to_thread(
            self.security.audit.record_failed_authentication, credential, source
        )

    # -- how often ----------------------------------------------------------------------

    async def check_rate(self, principal: Principal) -> None:
        """As `RateLimits.check_rate`: one hit on the credential's window, then (if it was
        allowed) one on the tenant's. Raises: RateLimited (retry_after_s set),
        StoreUnavailable."""
        credential = principal.key_id or f"user:{principal.subject}"
        tenant = principal.tenant
        windows = [
            (self._per_key, f"credential {credential!r}", ("key", tenant, credential)),
            (self._per_tenant, f"tenant {tenant!r}", ("tenant", tenant)),
        ]
        if self.config.rate_strategy == "fixed-window":
            refused = None
            for n, (item, _, ids) in enumerate(windows):
                async with self._reachable():
                    if not await self._limiter().hit(item, *ids):
                        refused = n
                        break
        else:
            refused = await self._hit_moving_windows([(item, ids) for item, _, ids in windows])
        if refused is not None:
            item, what, ids = windows[refused]
            async with self._reachable():
                reset_at = (await self._limiter().get_window_stats(item, *ids)).reset_time
            retry_s = max(math.ceil((reset_at - time.time()) * 10) / 10, 0.1)
            raise RateLimited(
                f"rate limit of {item} for {what} exceeded; retry in {retry_s} s", retry_s
            )

    async def _hit_moving_windows(
        self, windows: list[tuple[limits.RateLimitItem, tuple[str, ...]]]
    ) -> int | None:
        """One hit on each moving window in turn, in one round trip (`_MOVING_WINDOWS`, the
        windows `limits` keeps); the index of the first that refused, or None."""
        keys = [f"{LIMITS_PREFIX}:{item.key_for(*ids)}" for item, ids in windows]
        args: list[float] = [time.time()]
        for item, _ in windows:
            args += [item.amount, item.get_expiry()]
        async with self._reachable():
            aio = self.store.async_redis()
            script = self._scripts.get(id(aio))
            if script is None:
                script = self._scripts[id(aio)] = aio.register_script(_MOVING_WINDOWS)
            refused = int(await script(keys=keys, args=args))
        return refused - 1 if refused else None

    def _limiter(self) -> RateLimiter:
        """The limiter on this event loop's connection pool (one per loop, as the client)."""
        aio = self.store.async_redis()
        limiter = self._limiters.get(id(aio))
        if limiter is None:
            storage = RedisStorage(
                "async+" + self.store.url,
                implementation="redispy",
                connection_pool=aio.connection_pool,
                key_prefix=LIMITS_PREFIX,
            )
            strategy = (
                FixedWindowRateLimiter
                if self.config.rate_strategy == "fixed-window"
                else MovingWindowRateLimiter
            )
            limiter = self._limiters[id(aio)] = strategy(storage)
        return limiter

    # -- the audit ----------------------------------------------------------------------

    async def record(
        self,
        principal: Principal,
        action: str,
        obj: str = "",
        request_id: str = "",
        outcome: AuditOutcome = "ok",
        detail: str = "",
    ) -> None:
        """As `AuditLog.record`, in the principal's tenant. Raises: StoreUnavailable."""
        tenant, subject = principal.tenant, principal.subject
        fields = {
            "ts": repr(time.time()),
            "tenant": tenant,
            "subject": subject,
            "kind": principal.kind,
            "role": principal.role.value,
            "key_id": principal.key_id or "",
            "action": action,
            "object": obj,
            "request_id": request_id,
            "client_request_id": log_ids().get("client_request_id", "")[:200],
            "outcome": outcome,
            "detail": detail,
        }
        who = hashlib.sha256(subject.encode()).hexdigest()[:16]  # as `AuditLog` names it
        space = self.store.for_tenant(tenant)
        stream, index = space.key("audit", "p", who), space.key("audit", "principals")
        now = time.time()
        retention_s = self.config.audit_retention_s
        floor, ttl = now - retention_s, max(1, int(retention_s))
        async with self._reachable():
            pipe = self.store.async_redis().pipeline(transaction=False)
            pipe.xadd(stream, fields, maxlen=self.config.audit_max_entries, approximate=True)
            pipe.xtrim(stream, minid=f"{int(floor * 1000)}-0", approximate=False)
            pipe.expire(stream, ttl)
            pipe.zadd(index, {who: now})
            pipe.zremrangebyscore(index, "-inf", floor)
            pipe.expire(index, ttl)
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            url = redacted(self.store.url)
            raise StoreUnavailable(f"Redis at {url} is unreachable: {exc}") from None


def _item(rate: str) -> limits.RateLimitItem:
    """The item `cluster.auth.limits` counts `rate` under (the same namespace: one window)."""
    item = limits.parse(rate)
    return type(item)(item.amount, item.multiples, namespace="rate")


__all__ = ["Gate"]
