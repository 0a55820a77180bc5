"""The audit trail: a Redis stream per principal of each tenant, kept by time.

Each principal (API key, user, token subject, or "anonymous") writes to a stream of its own,
so a caller flooding the audit (200 denied calls a second) trims only its own history; each
stream is capped (`MAXLEN ~ max_entries`) and trimmed by age on every write (`XTRIM MINID`
at now - retention, exact: cheap when nothing is due).
Failed authentications (401) carry no principal: they are counted per minute by key id (when
the credential names a real key) and source address, never stored one by one.

Redis, under `dafnck:<tenant>:`:
- `audit:p:<sha256(subject)[:16]>`: stream, fields of `AuditEntry` but `id`.
- `audit:principals`: sorted set of those digests by last write (the streams to read).
- `audit:unauth:<minute>`: hash "<key id or ->|<source>" -> 401 count in that minute.
- `audit:unauth`: sorted set of those minutes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError

from cluster.auth.keys import AUTH_SPACE, key_id_of
from cluster.auth.models import AuditEntry, AuditOutcome, AuditPage, Principal
from cluster.contracts import Record
from cluster.errors import DafnckError, InputInvalid
from cluster.logs import current as log_ids
from cluster.store import Store, unavailable_as_error

log = logging.getLogger(__name__)
MAX_PAGE = 1000
#: Entries read per XRANGE while a filtered page is filled.
_CHUNK = 500
#: A cursor is the last entry's sort key: its id, its time in µs (which orders entries of
#: different streams within one millisecond) and its stream's digest (ids are per stream).
_CURSOR = re.compile(r"^(\d{1,20})-(\d{1,20})\.(\d{1,20})\.([0-9a-f]{16})$")
_MAX_SOURCE_CHARS = 64
_Key = tuple[int, int, int, str]  # (ms, µs, seq, digest)
#: Entries found while a page is filled: (sort key, entry id, fields).
_Found = list[tuple[_Key, str, dict[str, str]]]


class UnauthenticatedCount(Record):
    """Failed authentications in one minute from one source, with one key id (or "-")."""

    minute: float
    key_id: str
    source: str
    count: int


@dataclass(frozen=True)
class AuditFilter:
    """What `AuditLog.list` keeps: every field that is set must match (times in seconds)."""

    principal: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (
            (self.principal is None or fields.get("subject") == self.principal)
            and (self.action is None or fields.get("action") == self.action)
            and (self.outcome is None or fields.get("outcome") == self.outcome)
        )


def _digest(subject: str) -> str:
    return hashlib.sha256(subject.encode()).hexdigest()[:16]


class AuditLog:
    """Append and page through audit entries; the tenant is explicit on every call."""

    def __init__(
        self, store: Store, max_entries: int = 100_000, retention_s: float = 90 * 86400
    ) -> None:
        self.store = store
        self._max_entries = max_entries
        self.retention_s = retention_s
        self._index = store.for_tenant(AUTH_SPACE).key("apikeys")  # key id -> tenant

    def _key(self, tenant: str, *parts: str) -> str:
        return self.store.for_tenant(tenant).key("audit", *parts)

    @unavailable_as_error
    def record(
        self,
        principal: Principal | None,
        tenant: str,
        action: str,
        obj: str = "",
        request_id: str = "",
        outcome: AuditOutcome = "ok",
        detail: str = "",
    ) -> str:
        """Append one entry (principal None: the caller was not authenticated); returns its id.

        The client's own request id, if the request carried one, is taken from the log
        context the API sets (`client_request_id`).

        Raises: StoreUnavailable.
        """
        subject = principal.subject if principal else "anonymous"
        fields = {
            "ts": repr(time.time()),
            "tenant": tenant,
            "subject": subject,
            "kind": principal.kind if principal else "",
            "role": principal.role.value if principal else "",
            "key_id": (principal.key_id or "") if principal else "",
            "action": action,
            "object": obj,
            "request_id": request_id,
            "client_request_id": log_ids().get("client_request_id", "")[:200],
            "outcome": outcome,
            "detail": detail,
        }
        digest = _digest(subject)
        stream, index = self._key(tenant, "p", digest), self._key(tenant, "principals")
        now = time.time()
        floor, ttl = now - self.retention_s, max(1, int(self.retention_s))
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.xadd(stream, fields, maxlen=self._max_entries, approximate=True)
        pipe.xtrim(stream, minid=f"{int(floor * 1000)}-0", approximate=False)
        pipe.expire(stream, ttl)
        pipe.zadd(index, {digest: now})
        pipe.zremrangebyscore(index, "-inf", floor)
        pipe.expire(index, ttl)
        entry_id: str = pipe.execute()[0]
        return entry_id

    @unavailable_as_error
    def record_unauthenticated(self, tenant: str, key_id: str | None, source: str) -> None:
        """Count one failed authentication in this minute's bucket.

        Raises: StoreUnavailable.
        """
        now = time.time()
        minute = int(now // 60) * 60
        bucket, index = self._key(tenant, "unauth", str(minute)), self._key(tenant, "unauth")
        ttl = max(1, int(self.retention_s))
        field = f"{key_id or '-'}|{(source or '-')[:_MAX_SOURCE_CHARS]}"
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.hincrby(bucket, field, 1)
        pipe.expire(bucket, ttl)
        pipe.zadd(index, {str(minute): minute})
        pipe.zremrangebyscore(index, "-inf", now - self.retention_s)
        pipe.expire(index, ttl)
        pipe.execute()

    def record_failed_authentication(self, credential: str | None, source: str) -> None:
        """Count a 401 in the tenant of the key the credential names, else in the platform's
        auth space (an unknown key id is not kept: it would let a caller grow the counters).

        Never raises: a store that is down does not change the caller's 401.
        """
        key_id = key_id_of(credential) if credential else None
        try:
            tenant = self.store.redis.hget(self._index, key_id) if key_id else None
            self.record_unauthenticated(tenant or AUTH_SPACE, key_id if tenant else None, source)
        except (DafnckError, RedisError):
            log.warning("could not count a failed authentication", exc_info=True)

    @unavailable_as_error
    def unauthenticated(
        self, tenant: str, since: float | None = None, until: float | None = None, limit: int = 1440
    ) -> list[UnauthenticatedCount]:
        """The 401 counters of the newest `limit` minutes in since..until, oldest first.

        Raises: StoreUnavailable.
        """
        index = self._key(tenant, "unauth")
        low = "-inf" if since is None else int(since // 60) * 60
        high = "+inf" if until is None else until
        minutes = self.store.redis.zrevrangebyscore(index, high, low, start=0, num=limit)[::-1]
        pipe = self.store.redis.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(self._key(tenant, "unauth", minute))
        counts = []
        for minute, bucket in zip(minutes, pipe.execute(), strict=True):
            for field, count in sorted(bucket.items()):
                key_id, _, source = field.partition("|")
                counts.append(UnauthenticatedCount(
                    minute=float(minute), key_id=key_id, source=source, count=int(count)
                ))  # fmt: skip
        return counts

    @unavailable_as_error
    def list(
        self,
        tenant: str,
        cursor: str | None = None,
        limit: int = 100,
        where: AuditFilter | None = None,
    ) -> AuditPage:
        """Entries oldest first, after `cursor` (the `next_cursor` of a previous page).

        Raises: InputInvalid (limit outside 1..1000, a malformed cursor, since after until),
        StoreUnavailable.
        """
        where = where or AuditFilter()
        after = _validated(cursor, limit, where)
        if where.principal is not None:
            digests = [_digest(where.principal)]
        else:
            digests = self.store.redis.zrange(self._key(tenant, "principals"), 0, -1)
        found: _Found = []
        for digest in digests:
            found.extend(self._scan(tenant, digest, after, where, limit + 1))
        found.sort(key=lambda f: f[0])
        page = found[:limit]
        entries = [AuditEntry(id=eid, **fields) for _, eid, fields in page]
        more = len(found) > limit
        last = page[-1][0] if page else None
        next_cursor = f"{last[0]}-{last[2]}.{last[1]}.{last[3]}" if more and last else None
        return AuditPage(entries=entries, next_cursor=next_cursor)

    def _scan(
        self, tenant: str, digest: str, after: _Key | None, where: AuditFilter, want: int
    ) -> _Found:
        """Up to `want` matching entries of one principal's stream, past `after`."""
        stream = self._key(tenant, "p", digest)
        low = max(
            int(where.since * 1000) if where.since is not None else 0, after[0] if after else 0
        )
        start = f"{low}-0"  # the whole millisecond: its µs, not its seq, orders the streams
        end = f"{int(where.until * 1000)}-{2**64 - 1}" if where.until is not None else "+"
        out: _Found = []
        while len(out) < want:
            raw = self.store.redis.xrange(stream, min=start, max=end, count=_CHUNK)
            for eid, fields in raw:
                key = _sort_key(eid, fields, digest)
                if (after is None or key > after) and where.matches(fields):
                    out.append((key, eid, fields))
            if len(raw) < _CHUNK:
                break
            start = f"({raw[-1][0]}"
        return out[:want]


def _sort_key(entry_id: str, fields: Mapping[str, str], digest: str) -> _Key:
    ms, _, seq = entry_id.partition("-")
    try:
        micros = int(float(fields.get("ts", "0")) * 1_000_000)
    except ValueError:
        micros = 0
    return int(ms), micros, int(seq or 0), digest


def _validated(cursor: str | None, limit: int, where: AuditFilter) -> _Key | None:
    """The cursor as a sort key. Raises: InputInvalid naming every problem."""
    problems = []
    if not 1 <= limit <= MAX_PAGE:
        problems.append(f"limit {limit!r} must be in 1..{MAX_PAGE}")
    match = _CURSOR.match(cursor) if cursor is not None else None
    if cursor is not None and match is None:
        problems.append(f"cursor {cursor!r} is not the next_cursor of a previous page")
    if where.since is not None and where.until is not None and where.since > where.until:
        problems.append(f"since {where.since!r} is after until {where.until!r}")
    if problems:
        raise InputInvalid("audit query", problems)
    if match is None:
        return None
    ms, seq, micros, digest = match.groups()
    return int(ms), int(micros), int(seq), digest


__all__ = ["MAX_PAGE", "AuditFilter", "AuditLog", "UnauthenticatedCount"]
