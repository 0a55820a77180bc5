"""Per-tenant quotas: what one tenant may hold at once, so it cannot starve the others.

`Quotas` is the `quotas` section of the settings: its fields are every tenant's limits,
and `tenants` overrides some of them for named tenants. Counters that several processes
share (open streams, stored bytes and objects, topics) live in Redis under the tenant and
are checked and changed in one Lua call, so two replicas never both take the last slot.

Open streams are leases: each holds a member of a sorted set scored by its expiry, renewed
while the stream runs and removed when it ends. A replica that crashes never removes its
leases, so they expire after `stream_lease_s` instead of holding the slots forever.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from cluster.errors import QuotaExceeded, StorageQuotaExceeded

if TYPE_CHECKING:
    from cluster.store import Store

GIB = 1024**3


class Quotas(BaseModel):
    """Every tenant's limits; `tenants` sets other values for named tenants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Server-Sent Event and WebSocket streams one API key (or one tenant) holds open.
    streams_per_key: int = Field(default=16, ge=1)
    streams_per_tenant: int = Field(default=64, ge=1)
    #: A stream's slot is freed this long after its replica stopped renewing it (a crash).
    stream_lease_s: float = Field(default=30.0, ge=1)
    #: Data objects: bytes kept (inline payloads and Parquet files) and number of objects.
    stored_bytes: int = Field(default=GIB, ge=0)
    stored_objects: int = Field(default=100_000, ge=0)
    #: Distinct message topics.
    topics: int = Field(default=1_000, ge=0)
    #: Task records kept (tasks submitted without waiting, for a day each).
    task_records: int = Field(default=100_000, ge=0)
    #: Replicas and CPUs across the tenant's agents (an autoscaled pool counts at its max).
    replicas: int = Field(default=64, ge=0)
    cpus: float = Field(default=64.0, ge=0)
    #: Workflow executions running at once (sub-workflows count too).
    executions_running: int = Field(default=1_000, ge=1)
    #: Items of one `for_each` fan-out.
    for_each_items: int = Field(default=10_000, ge=1)
    #: Sub-workflows inside sub-workflows: A -> B -> C is depth 2.
    workflow_depth: int = Field(default=5, ge=0)
    #: One expression's evaluation: interpreter steps, and seconds (off the event loop).
    expression_steps: int = Field(default=100_000, ge=100)
    expression_timeout_s: float = Field(default=1.0, gt=0)
    #: LLM spend per UTC day in USD; empty: no daily cap.
    llm_usd_per_day: float | None = Field(default=None, ge=0)
    #: Per-tenant values: {"acme": {"replicas": 200}}.
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_tenants(self) -> Quotas:
        for name in self.tenants:
            self.for_tenant(name)
        return self

    def for_tenant(self, tenant: str) -> Quotas:
        """The limits that apply to `tenant`.

        Raises: ValueError (through pydantic) when an override names no quota.
        """
        override = self.tenants.get(tenant)
        if not override:
            return self
        if "tenants" in override:
            raise ValueError(f"quotas.tenants.{tenant}: 'tenants' cannot be nested")
        try:
            return Quotas.model_validate({**self.model_dump(exclude={"tenants"}), **override})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"quotas.tenants.{tenant}: {problems}") from None


#: As JSON text in `mode="json"` dumps, so `DAFNCK_QUOTAS` made from one parses back.
quotas_as_json = PlainSerializer(lambda q: q.model_dump_json(), when_used="json")


def check_count(limit: str, used: float, adding: float, maximum: float, tenant: str) -> None:
    """Raises: QuotaExceeded when `used + adding` goes past `maximum`."""
    if adding > 0 and used + adding > maximum:
        raise QuotaExceeded(limit, maximum, f"tenant {tenant!r} would use {used + adding:g}")


# -- streams -----------------------------------------------------------------------------

#: KEYS: tenant set, key set. ARGV: now, expiry, lease id, tenant max, key max.
#: Returns 0 (taken), 1 (tenant full) or 2 (key full).
_LEASE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((ARGV[2] - ARGV[1]) * 1000) + 1000)
redis.call('PEXPIRE', KEYS[2], math.ceil((ARGV[2] - ARGV[1]) * 1000) + 1000)
return 0
"""


class StreamLease:
    """One open stream's slot in its key's and its tenant's counts."""

    def __init__(self, store: Store, quotas: Quotas, key_id: str) -> None:
        self.store = store
        self.quotas = quotas
        self.id = uuid.uuid4().hex
        self._keys = [
            store.key("quota", "streams"),
            store.key("quota", "streams", "key", key_id or "-"),
        ]
        self._renewed = 0.0

    async def acquire(self) -> StreamLease:
        """Raises: QuotaExceeded (streams_per_key or streams_per_tenant), StoreUnavailable."""
        q = self.quotas
        now = time.time()
        script = self.store.async_redis().register_script(_LEASE_LUA)
        args = [now, now + q.stream_lease_s, self.id, q.streams_per_tenant, q.streams_per_key]
        full = int(await script(keys=self._keys, args=args))
        if full:
            limit = "streams_per_key" if full == 2 else "streams_per_tenant"
            value = q.streams_per_key if full == 2 else q.streams_per_tenant
            raise QuotaExceeded(
                limit, value, f"tenant {self.store.tenant!r} has {value} streams open; close one"
            )
        self._renewed = time.monotonic()
        return self

    async def renew(self) -> None:
        """Push the expiry on (at most every third of the lease); call it while streaming."""
        if time.monotonic() - self._renewed < self.quotas.stream_lease_s / 3:
            return
        self._renewed = time.monotonic()
        expiry = time.time() + self.quotas.stream_lease_s
        redis = self.store.async_redis()
        for key in self._keys:
            await redis.zadd(key, {self.id: expiry}, xx=True)

    async def release(self) -> None:
        """Free the slot, even while the caller is being cancelled (a stream whose client
        left is cancelled, and Starlette's cancel scopes cancel every later await again):
        the removal runs as a task of its own. An outage leaves the lease to expire."""
        task = asyncio.ensure_future(self._remove())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:  # the lease expires on its own
            return

    async def _remove(self) -> None:
        async with self.store.async_redis().pipeline(transaction=True) as pipe:
            for key in self._keys:
                pipe.zrem(key, self.id)
            await pipe.execute()


# -- stored data -------------------------------------------------------------------------

#: KEYS: usage hash, sizes hash. ARGV: object id, new size, max bytes, max objects.
#: Returns 0 (kept), 1 (bytes full) or 2 (objects full).
_STORE_LUA = """
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local objects = tonumber(redis.call('HGET', KEYS[1], 'objects') or '0')
local size = tonumber(ARGV[2])
local grow = size - math.max(old, 0)
if old < 0 and objects + 1 > tonumber(ARGV[4]) then return 2 end
if grow > 0 and bytes + grow > tonumber(ARGV[3]) then return 1 end
if old < 0 then redis.call('HINCRBY', KEYS[1], 'objects', 1) end
redis.call('HINCRBY', KEYS[1], 'bytes', grow)
redis.call('HSET', KEYS[2], ARGV[1], size)
return 0
"""
#: KEYS: usage hash, sizes hash. ARGV: object id, size to return to (-1: forget it).
_UNSTORE_LUA = """
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if old < 0 then return 0 end
local size = tonumber(ARGV[2])
if size < 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'objects', -1)
  redis.call('HINCRBY', KEYS[1], 'bytes', -old)
else
  redis.call('HSET', KEYS[2], ARGV[1], size)
  redis.call('HINCRBY', KEYS[1], 'bytes', size - old)
end
return 1
"""


class StorageQuota:
    """Bytes and objects a tenant's data objects hold, kept beside them in Redis."""

    def __init__(self, store: Store, quotas: Quotas) -> None:
        self.store = store
        self.quotas = quotas
        self._keys = [store.key("data", "quota"), store.key("data", "quota", "sizes")]
        self._store = store.redis.register_script(_STORE_LUA)
        self._unstore = store.redis.register_script(_UNSTORE_LUA)

    def size_of(self, oid: str) -> int | None:
        raw = self.store.redis.hget(self._keys[1], oid)
        return None if raw is None else int(raw)

    def usage(self) -> dict[str, int]:
        raw = self.store.redis.hgetall(self._keys[0])
        return {"bytes": int(raw.get("bytes", 0)), "objects": int(raw.get("objects", 0))}

    def reserve(self, oid: str, size: int, *, force: bool = False) -> None:
        """Count object `oid` at `size` bytes (new, or resized); `force` counts it even past
        the quotas (a change checked before it was written).

        Raises: StorageQuotaExceeded (stored_bytes or stored_objects).
        """
        q = self.quotas
        most = [10**18, 10**18] if force else [q.stored_bytes, q.stored_objects]
        full = int(self._store(keys=self._keys, args=[oid, size, *most]))
        if full:
            limit = "stored_bytes" if full == 1 else "stored_objects"
            value = q.stored_bytes if full == 1 else q.stored_objects
            raise StorageQuotaExceeded(
                limit,
                value,
                f"tenant {self.store.tenant!r} cannot keep {size} more bytes in data object "
                f"{oid!r}; delete objects it no longer needs",
            )

    def restore(self, oid: str, size: int | None) -> None:
        """Undo a reservation: back to `size`, or forget the object (None)."""
        self._unstore(keys=self._keys, args=[oid, -1 if size is None else size])


# -- counted sets (topics) -----------------------------------------------------------------

#: KEYS: the set. ARGV: member, max. Returns 1 (member, new or known) or 0 (full).
_ADMIT_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


async def admit_member(store: Store, what: str, member: str, limit: str, maximum: int) -> None:
    """Count `member` in the tenant's set `what` unless it is full.

    Raises: QuotaExceeded (`limit`), StoreUnavailable.
    """
    script = store.async_redis().register_script(_ADMIT_LUA)
    if not int(await script(keys=[store.key("quota", what)], args=[member, maximum])):
        raise QuotaExceeded(
            limit, maximum, f"tenant {store.tenant!r} cannot add {member!r} to its {what}"
        )


async def forget_member(store: Store, what: str, member: str) -> None:
    await store.async_redis().srem(store.key("quota", what), member)


__all__ = [
    "GIB",
    "Quotas",
    "StorageQuota",
    "StreamLease",
    "admit_member",
    "check_count",
    "forget_member",
    "quotas_as_json",
]
