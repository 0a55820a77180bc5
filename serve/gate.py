"""A request's security on the event loop: who is calling, how often, and the audit entry.

`cluster.auth.Security` does these with redis-py's blocking client: in the API each call
held a worker thread through its round trips, on every request. `Gate` does the hot paths
(API keys, tokens an API key minted, both rate limits, audit entries) with the store's
`redis.asyncio` client instead, reading and writing the very keys, windows and streams
`cluster.auth` does (`tests/unit/serve/test_gate.py` checks the two against each other on
one Valkey). The rare paths (a user's token, counting a failed authentication) call
`Security` in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import time
from collections.abc import AsyncIterator

import limits
import redis
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from cluster.auth.keys import AUTH_SPACE, KEY_PREFIX, digest, key_id_of
from cluster.auth.limits import KEY_PREFIX as LIMITS_PREFIX
from cluster.auth.models import ApiKeyRecord, AuditOutcome, Principal, SecurityConfig
from cluster.auth.security import Security
from cluster.errors import RateLimited, StoreUnavailable, Unauthorized
from cluster.logs import current as log_ids
from cluster.store import Store, redacted

#: Compared against when the key id is unknown, so both paths hash and compare.
_NO_DIGEST = "0" * 64


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

    # -- who ----------------------------------------------------------------------------

    async def authenticate(self, credential: str) -> Principal:
        """As `Security.authenticate`. Raises: Unauthorized, StoreUnavailable."""
        if not credential:
            raise Unauthorized("no credential: send an API key or a bearer token")
        if credential.startswith(KEY_PREFIX):
            return await self._api_key(credential)
        principal = self.security.tokens.verify_token(credential)  # CPU only: a signature
        if principal.key_id is None:  # a user's login minted it: the rare path
            users = self.security.users
            await asyncio.to_thread(
                users.check_token, principal.tenant, principal.subject, principal.token_version
            )
        elif not _active(await self._record(principal.key_id)):
            raise Unauthorized(f"API key {principal.key_id!r} behind this token has been revoked")
        return principal

    async def _api_key(self, secret: str) -> Principal:
        """As `ApiKeys.authenticate_api_key`: digests compared in constant time."""
        key_id = key_id_of(secret)
        if key_id is None:
            raise Unauthorized("malformed API key: expected 'dk_<16 hex>_<43 base64url>'")
        record = await self._record(key_id)
        expected = record.secret_sha256 if record else _NO_DIGEST
        matches = hmac.compare_digest(digest(secret), expected)
        if record is None or not matches:
            raise Unauthorized(f"API key {key_id!r} is unknown or its secret does not match")
        if record.revoked_at is not None:
            raise Unauthorized(f"API key {key_id!r} has been revoked")
        return Principal(
            subject=f"key:{key_id}",
            tenant=record.tenant,
            role=record.role,
            kind="api_key",
            key_id=key_id,
        )

    async def _record(self, key_id: str) -> ApiKeyRecord | None:
        async with self._reachable():
            aio = self.store.async_redis()
            tenant = await aio.hget(self._index, key_id)
            keys = self.store.for_tenant(tenant).key("auth", "apikeys") if tenant else None
            raw = await aio.hget(keys, key_id) if keys else None
        if raw is None:
            return None
        record = ApiKeyRecord.model_validate_json(raw)
        # The index and the record must agree, or the key belongs to no one.
        return record if record.tenant == tenant and record.key_id == key_id else None

    async def failed(self, credential: str | None, source: str) -> None:
        """Count a 401 (never raises: a store that is down does not change the 401)."""
        await asyncio.to_thread(
            self.security.audit.record_failed_authentication, credential, source
        )

    # -- how often ----------------------------------------------------------------------

    async def check_rate(self, principal: Principal) -> None:
        """As `RateLimits.check_rate`: one hit on the credential's window, then the
        tenant's. Raises: RateLimited (retry_after_s set), StoreUnavailable."""
        credential = principal.key_id or f"user:{principal.subject}"
        tenant = principal.tenant
        await self._hit(self._per_key, f"credential {credential!r}", "key", tenant, credential)
        await self._hit(self._per_tenant, f"tenant {tenant!r}", "tenant", tenant)

    async def _hit(self, item: limits.RateLimitItem, what: str, *ids: str) -> None:
        limiter = self._limiter()
        async with self._reachable():
            if await limiter.hit(item, *ids):
                return
            reset_at = (await limiter.get_window_stats(item, *ids)).reset_time
        retry_s = max(math.ceil((reset_at - time.time()) * 10) / 10, 0.1)
        raise RateLimited(
            f"rate limit of {item} for {what} exceeded; retry in {retry_s} s", retry_s
        )

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


def _active(record: ApiKeyRecord | None) -> bool:
    return record is not None and record.revoked_at is None


def _item(rate: str) -> limits.RateLimitItem:
    """The item `cluster.auth.limits` counts `rate` under (the same namespace: one window)."""
    item = limits.parse(rate)
    return type(item)(item.amount, item.multiples, namespace="rate")


__all__ = ["Gate"]
