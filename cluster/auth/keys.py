"""API keys: shown once, kept as a SHA-256 digest, scoped to a tenant and a role, revocable.

A key is `dk_<key id>_<random>`: the id (16 hex) is public and names the key in listings,
logs and the audit; the random part (256 bits, base64url) is the secret. Keys are looked up
by id, so a plain SHA-256 of the whole key is enough: nothing with 256 bits of entropy can
be guessed from its digest, a slow hash (argon2) would only cost every request tens of
milliseconds, and a pepper would tie every key to one more secret shared by all processes
(a lost or rotated pepper would silently revoke every key).

Redis: `dafnck:<tenant>:auth:apikeys` (hash: key id -> ApiKeyRecord JSON) and the global
index `dafnck:_auth:apikeys` (hash: key id -> tenant) so a key resolves to its tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time

from pydantic import ValidationError

from cluster.auth.models import ApiKeyInfo, ApiKeyRecord, Principal, Role
from cluster.errors import InputInvalid, NotFound, Unauthorized
from cluster.store import Store, unavailable_as_error

log = logging.getLogger(__name__)

#: Tenant-like name of the global auth space; "_" cannot start a real tenant's name.
AUTH_SPACE = "_auth"
KEY_PREFIX = "dk_"
_KEY_RE = re.compile(r"^dk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
#: Compared against when the key id is unknown, so both paths hash and compare.
_NO_DIGEST = "0" * 64


def digest(secret: str) -> str:
    """The SHA-256 of a key's secret, hex: what Redis keeps instead of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The key id inside a well-formed key, else None."""
    match = _KEY_RE.match(secret)
    return match.group(1) if match else None


class ApiKeys:
    """Create, list, revoke and authenticate API keys of every tenant on one Redis."""

    def __init__(self, store: Store) -> None:
        self.store = store
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
        return ApiKeyInfo.model_validate(record.model_dump())

    @unavailable_as_error
    def authenticate_api_key(self, secret: str) -> Principal:
        """The principal of a valid, unrevoked key; compares digests in constant time.

        Raises: Unauthorized (malformed, unknown, wrong secret or revoked; the message names
        at most the key id, never the secret), StoreUnavailable.
        """
        key_id = key_id_of(secret)
        if key_id is None:
            raise Unauthorized("malformed API key: expected 'dk_<16 hex>_<43 base64url>'")
        record = self._record(key_id)
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

    @unavailable_as_error
    def is_active(self, key_id: str) -> bool:
        """Whether the key exists and is not revoked (for tokens a key minted).

        Raises: StoreUnavailable.
        """
        record = self._record(key_id)
        return record is not None and record.revoked_at is None

    def _record(self, key_id: str) -> ApiKeyRecord | None:
        tenant = self.store.redis.hget(self._index, key_id)
        raw = self.store.redis.hget(self._keys_of(tenant), key_id) if tenant else None
        if raw is None:
            return None
        record = ApiKeyRecord.model_validate_json(raw)
        # The index and the record must agree, or the key belongs to no one.
        return record if record.tenant == tenant and record.key_id == key_id else None


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
