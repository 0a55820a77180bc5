"""Rate limits per credential and per tenant, and the admission of password logins, shared by
every process through Redis (`limits`).

The moving window (default) counts exactly the hits of the last period, so a burst at a
window edge cannot double the rate; it keeps one list entry per allowed hit (memory grows
with the limit, fine at hundreds per second). "fixed-window" keeps one counter instead.

Logins (`LoginLimits`) are admitted before any password is hashed: every attempt counts
against its client address, failures against the username (from anywhere), and each
(username, address) that keeps failing waits a doubling delay; there is no lockout a
stranger could trigger for someone else's address.

Redis: `dafnck:_limits:rate/<scope>/<tenant>[/<credential>]/<amount>/<multiples>/<unit>`,
`dafnck:_limits:login/source|user/...` (the same, for logins), and
`dafnck:_limits:login-fails:<digest>` / `login-wait:<digest>` per (tenant, username, address).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import TypeVar

import limits
import redis
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from cluster.auth.models import Principal, SecurityConfig
from cluster.errors import RateLimited, StoreUnavailable
from cluster.store import Store, redacted

KEY_PREFIX = "dafnck:_limits"
_NAMESPACE = "rate"
_LOGIN_NAMESPACE = "login"
T = TypeVar("T")


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
        _take(self._limiter, self.store, item, what, *ids)


class LoginLimits:
    """Admit a password login before hashing; record how it ended."""

    def __init__(self, store: Store, config: SecurityConfig | None = None) -> None:
        self.store = store
        self._config = config or SecurityConfig()
        storage = RedisStorage(
            store.url, connection_pool=store.redis.connection_pool, key_prefix=KEY_PREFIX
        )
        self._limiter = _strategy(self._config.rate_strategy, storage)
        self._per_source = _items(self._config.login_rate_per_source)
        self._per_user = _items(self._config.login_rate_per_user)

    def admit(self, tenant: str, username: str, source: str) -> None:
        """Count one login attempt from `source`; refuse it while any limit is reached.

        Raises: RateLimited (retry_after_s set), StoreUnavailable.
        """
        for item in self._per_source:
            _take(self._limiter, self.store, item, f"logins from {source!r}", "source", source)
        user = _digest(tenant, username)
        for item in self._per_user:
            what = f"failed logins of {username!r}"
            _take(self._limiter, self.store, item, what, "user", user, test_only=True)
        wait_ms = _guard(
            self.store, lambda: self.store.redis.pttl(self._wait_key(tenant, username, source))
        )
        if wait_ms > 0:
            retry_s = math.ceil(wait_ms / 100) / 10
            raise RateLimited(
                f"logins of {username!r} from {source!r} failed repeatedly; retry in {retry_s} s",
                retry_s,
            )

    def failed(self, tenant: str, username: str, source: str) -> float:
        """Count a failure; returns the delay (s) the next try from `source` must wait.

        Raises: StoreUnavailable.
        """
        config = self._config
        fails_key = f"{KEY_PREFIX}:login-fails:{_digest(tenant, username, source)}"

        def record() -> float:
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.incr(fails_key)
            pipe.expire(fails_key, config.login_failure_window_s)
            failures = int(pipe.execute()[0])
            for item in self._per_user:
                self._limiter.hit(item, "user", _digest(tenant, username))
            over = failures - config.login_free_failures
            if over <= 0:
                return 0.0
            delay_s = min(
                config.login_delay_base_s * 2 ** min(over - 1, 30), config.login_delay_max_s
            )
            wait_key = self._wait_key(tenant, username, source)
            self.store.redis.set(wait_key, "1", px=max(int(delay_s * 1000), 1))
            return delay_s

        return _guard(self.store, record)

    def succeeded(self, tenant: str, username: str, source: str) -> None:
        """Forget the failures of (username, source). Raises: StoreUnavailable."""
        digest = _digest(tenant, username, source)
        _guard(
            self.store,
            lambda: self.store.redis.delete(
                f"{KEY_PREFIX}:login-fails:{digest}", f"{KEY_PREFIX}:login-wait:{digest}"
            ),
        )

    @staticmethod
    def _wait_key(tenant: str, username: str, source: str) -> str:
        return f"{KEY_PREFIX}:login-wait:{_digest(tenant, username, source)}"


def _guard(store: Store, call: Callable[[], T]) -> T:
    try:
        return call()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis at {redacted(store.url)} is unreachable: {exc}") from None


def _take(
    limiter: RateLimiter,
    store: Store,
    item: limits.RateLimitItem,
    what: str,
    *ids: str,
    test_only: bool = False,
) -> None:
    """One hit (or, with `test_only`, a check) of `item`. Raises: RateLimited, StoreUnavailable."""
    try:
        if (limiter.test if test_only else limiter.hit)(item, *ids):
            return
        reset_at = limiter.get_window_stats(item, *ids).reset_time
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis at {redacted(store.url)} is unreachable: {exc}") from None
    retry_s = max(math.ceil((reset_at - time.time()) * 10) / 10, 0.1)
    raise RateLimited(f"rate limit of {item} for {what} exceeded; retry in {retry_s} s", retry_s)


def _digest(*parts: str) -> str:
    """Names and addresses from the request, as a fixed-size key part."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _item(rate: str) -> limits.RateLimitItem:
    item = limits.parse(rate)
    return type(item)(item.amount, item.multiples, namespace=_NAMESPACE)


def _items(rates: str) -> list[limits.RateLimitItem]:
    return [
        type(item)(item.amount, item.multiples, namespace=_LOGIN_NAMESPACE)
        for item in limits.parse_many(rates)
    ]
