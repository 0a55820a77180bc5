"""API keys: shown once, kept as a SHA-256 digest, scoped to a tenant and a role, revocable.

A key is `dk_<key id>_<random>`: the id (16 hex) is public and names the key in listings,
logs and the audit; the random part (256 bits, base64url) is the secret. Keys are looked up
by id, so a plain SHA-256 of the whole key is enough: nothing with 256 bits of entropy can
be guessed from its digest, a slow hash (argon2) would only cost every request tens of
milliseconds, and a pepper would tie every key to one more secret shared by all processes
(a lost or rotated pepper would silently revoke every key).

Redis: `dafnck:<tenant>:auth:apikeys` (hash: key id -> ApiKeyRecord JSON) and the global
index `dafnck:_auth:apikeys` (hash: key id -> tenant) so a key resolves to its tenant.

Every request looks its key up, so records are read through the auth cache (`auth_cache`:
L1 in process, L2 `dafnck:_auth:authcache:key:<id>`); a revocation returns once every
listening process has dropped its copy (see `cluster.cache`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any

from pydantic import ValidationError

from cluster.auth.models import ApiKeyInfo, ApiKeyRecord, Principal, Role
from cluster.cache import CacheManager, shared_cache
from cluster.errors import InputInvalid, NotFound, Unauthorized
from cluster.store import Store, unavailable_as_error

log = logging.getLogger(__name__)

#: Tenant-like name of the global auth space; "_" cannot start a real tenant's name.
AUTH_SPACE = "_auth"
KEY_PREFIX = "dk_"
_KEY_RE = re.compile(r"^dk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
#: Compared against when the key id is unknown, so both paths hash and compare.
_NO_DIGEST = "0" * 64
#: How long a process may keep a key record or a user's token version it was not told
#: changed: only when its listener missed a change's acknowledgement deadline (1 s).
AUTH_CACHE_L1_TTL_S = 10.0
AUTH_CACHE_L2_TTL_S = 600.0


def auth_cache(store: Store) -> CacheManager:
    """The cache of key records and users' token versions, shared by `ApiKeys` and `Users`."""
    return shared_cache(
        store.for_tenant(AUTH_SPACE),
        "authcache",
        l1_maxsize=100_000,
        l1_ttl_s=AUTH_CACHE_L1_TTL_S,
        l2_ttl_s=AUTH_CACHE_L2_TTL_S,
    )


def digest(secret: str) -> str:
    """The SHA-256 of a key's secret, hex: what Redis keeps instead of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The key id inside a well-formed key, else None."""
    match = _KEY_RE.match(secret)
    return match.group(1) if match else None


class ApiKeys:
    """Create, list, revoke and authenticate API keys of every tenant on one Redis."""

    def __init__(self, store: Store, cache: CacheManager | None = None) -> None:
        self.store = store
        self.cache = cache or auth_cache(store)
        self._index = store.for_tenant(AUTH_SPACE).key("apikeys")

    def _keys_of(self, tenant: str) -> str:
        return self.store.for_tenant(tenant).key("auth", "apikeys")

    @unavailable_as_error
    def create_api_key(self, tenant: str, role: Role | str, name: str) -> tuple[str, str]:
        """Make a key; returns (key id, secret). The secret is never retrievable again.

        Raises: InputInvalid (bad tenant, role or name), StoreUnavailable.
        """
        key_id = secrets.token_hex(8)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = _validated(key_id, tenant, role, name, digest(secret))
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(self._keys_of(record.tenant), key_id, record.model_dump_json())
        pipe.hset(self._index, key_id, record.tenant)
        pipe.execute()
        log.info(
            "created API key %s (%s) for tenant %s",
            key_id,
            record.role,
            tenant,
            extra={"tenant": tenant, "key_id": key_id},
        )
        return key_id, secret

    @unavailable_as_error
    def list_api_keys(self, tenant: str) -> list[ApiKeyInfo]:
        """The tenant's keys, revoked ones included, oldest first, without secrets or digests.

        Raises: StoreUnavailable.
        """
        raw = self.store.redis.hvals(self._keys_of(tenant))
        infos = [
            ApiKeyInfo.model_validate(ApiKeyRecord.model_validate_json(v).model_dump()) for v in raw
        ]
        return sorted(infos, key=lambda k: (k.created_at, k.key_id))

    @unavailable_as_error
    def revoke_api_key(self, tenant: str, key_id: str) -> ApiKeyInfo:
        """Revoke a key of this tenant at once; revoking twice is a no-op.

        Raises: NotFound (no such key in this tenant, including another tenant's key),
        StoreUnavailable.
        """
        key = self._keys_of(tenant)
        raw = self.store.redis.hget(key, key_id)
        if raw is None:
            raise NotFound(f"API key {key_id!r} not found in tenant {tenant!r}")
        record = ApiKeyRecord.model_validate_json(raw)
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": time.time()})
            self.store.redis.hset(key, key_id, record.model_dump_json())
            log.info("revoked API key %s", key_id, extra={"tenant": tenant, "key_id": key_id})
        # Even when already revoked: a writer that died before this left copies behind.
        self.cache.invalidate(f"key:{key_id}")
        return ApiKeyInfo.model_validate(record.model_dump())

    @unavailable_as_error
    def authenticate_api_key(self, secret: str) -> Principal:
        """The principal of a valid, unrevoked key; compares digests in constant time.

        Raises: Unauthorized (malformed, unknown, wrong secret or revoked; the message names
        at most the key id, never the secret), StoreUnavailable.
        """
        key_id = _key_id(secret)
        return _principal(key_id, secret, self._cached(key_id))

    def authenticate_cached(self, secret: str) -> Principal | None:
        """`authenticate_api_key` from this process's cache alone (no I/O: safe on an event
        loop); None when the key is not cached (then `authenticate_api_key` fills it).

        Raises: Unauthorized (as `authenticate_api_key`).
        """
        key_id = _key_id(secret)
        found, record = self.cache.peek(f"key:{key_id}")
        return _principal(key_id, secret, record) if found else None

    def is_active_cached(self, key_id: str) -> bool | None:
        """`is_active` from this process's cache alone; None when the key is not cached."""
        found, record = self.cache.peek(f"key:{key_id}")
        return (record is not None and not record["revoked"]) if found else None

    @unavailable_as_error
    def is_active(self, key_id: str) -> bool:
        """Whether the key exists and is not revoked (for tokens a key minted).

        Raises: StoreUnavailable.
        """
        record = self._cached(key_id)
        return record is not None and not record["revoked"]

    def _cached(self, key_id: str) -> dict[str, Any] | None:
        """What a request needs of a key's record (tenant, role, digest, revoked), cached."""

        def load() -> dict[str, Any] | None:
            record = self._record(key_id)
            if record is None:
                return None
            return {"tenant": record.tenant, "role": record.role.value,
                    "sha256": record.secret_sha256, "revoked": record.revoked_at is not None}  # fmt: skip

        found: dict[str, Any] | None = self.cache.fetch(f"key:{key_id}", load)
        return found

    def _record(self, key_id: str) -> ApiKeyRecord | None:
        tenant = self.store.redis.hget(self._index, key_id)
        raw = self.store.redis.hget(self._keys_of(tenant), key_id) if tenant else None
        if raw is None:
            return None
        record = ApiKeyRecord.model_validate_json(raw)
        # The index and the record must agree, or the key belongs to no one.
        return record if record.tenant == tenant and record.key_id == key_id else None


def _key_id(secret: str) -> str:
    """Raises: Unauthorized (not a well-formed key)."""
    key_id = key_id_of(secret)
    if key_id is None:
        raise Unauthorized("malformed API key: expected 'dk_<16 hex>_<43 base64url>'")
    return key_id


def _principal(key_id: str, secret: str, record: dict[str, Any] | None) -> Principal:
    """The key's principal, given what `ApiKeys._cached` holds of it; digests compared in
    constant time. Raises: Unauthorized."""
    expected = record["sha256"] if record else _NO_DIGEST
    matches = hmac.compare_digest(digest(secret), expected)
    if record is None or not matches:
        raise Unauthorized(f"API key {key_id!r} is unknown or its secret does not match")
    if record["revoked"]:
        raise Unauthorized(f"API key {key_id!r} has been revoked")
    return Principal(
        subject=f"key:{key_id}",
        tenant=record["tenant"],
        role=record["role"],
        kind="api_key",
        key_id=key_id,
    )


def _validated(key_id: str, tenant: str, role: Role | str, name: str, sha: str) -> ApiKeyRecord:
    problems = []
    if not name.strip() or len(name) > 100:
        problems.append(f"name {name!r} must be 1 to 100 characters")
    try:
        record = ApiKeyRecord(
            key_id=key_id,
            tenant=tenant,
            role=role,  # type: ignore[arg-type]  # a str is validated into a Role
            name=name,
            created_at=time.time(),
            secret_sha256=sha,
        )
    except ValidationError as exc:
        problems += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise InputInvalid("API key request", problems) from None
    if problems:
        raise InputInvalid("API key request", problems)
    return record
