"""Rate limits per credential and per tenant, shared by every process through Redis (`limits`).

The moving window (default) counts exactly the hits of the last period, so a burst at a
window edge cannot double the rate; it keeps one list entry per allowed hit (memory grows
with the limit, fine at hundreds per second). "fixed-window" keeps one counter instead.

Redis: `dafnck:_limits:rate/<scope>/<tenant>[/<credential>]/<amount>/<multiples>/<unit>`.
"""

from __future__ import annotations

import math
import time

import limits
import redis
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from cluster.errors import RateLimited, StoreUnavailable
from cluster.security_models import Principal, SecurityConfig
from cluster.store import Store, redacted

KEY_PREFIX = "dafnck:_limits"
_NAMESPACE = "rate"


def _strategy(name: str, storage: RedisStorage) -> RateLimiter:
    if name == "fixed-window":
        return FixedWindowRateLimiter(storage)
    return MovingWindowRateLimiter(storage)


class RateLimits:
    """`check_rate(principal)`: one hit against the credential's limit, then the tenant's."""

    def __init__(self, store: Store, config: SecurityConfig | None = None) -> None:
        self.store = store
        config = config or SecurityConfig()
        # The store's own connection pool: its timeouts, no second set of sockets.
        storage = RedisStorage(
            store.url, connection_pool=store.redis.connection_pool, key_prefix=KEY_PREFIX
        )
        self._limiter = _strategy(config.rate_strategy, storage)
        self._per_key = _item(config.rate_per_key)
        self._per_tenant = _item(config.rate_per_tenant)

    def check_rate(self, principal: Principal) -> None:
        """Count one request of the principal.

        Raises: RateLimited (with retry_after_s; the message names the key or the tenant),
        StoreUnavailable.
        """
        credential = principal.key_id or f"user:{principal.subject}"
        self._hit(self._per_key, f"credential {credential!r}", "key", principal.tenant, credential)
        self._hit(self._per_tenant, f"tenant {principal.tenant!r}", "tenant", principal.tenant)

    def _hit(self, item: limits.RateLimitItem, what: str, *ids: str) -> None:
        try:
            if self._limiter.hit(item, *ids):
                return
            reset_at = self._limiter.get_window_stats(item, *ids).reset_time
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"Redis at {redacted(self.store.url)} is unreachable: {exc}"
            ) from None
        retry_s = max(math.ceil((reset_at - time.time()) * 10) / 10, 0.1)
        raise RateLimited(
            f"rate limit of {item} for {what} exceeded; retry in {retry_s} s", retry_s
        )


def _item(rate: str) -> limits.RateLimitItem:
    item = limits.parse(rate)
    return type(item)(item.amount, item.multiples, namespace=_NAMESPACE)
