"""Redis Streams mechanics shared by the hub, the queues and agent replicas (redis.asyncio).

`append` writes with `MAXLEN ~` retention. `GroupReader` gives at-least-once delivery
through a consumer group: entries a dead reader left unacknowledged for `claim_idle_ms` are
claimed by another reader (XAUTOCLAIM), and an entry delivered more than `max_deliveries`
times goes to a dead-letter stream instead of a handler. `history` pages with XRANGE.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis

from cluster import metrics
from cluster.errors import SpecInvalid, StoreUnavailable
from cluster.store import Store, redacted

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")

#: A stream entry as redis-py returns it: (id, fields).
Entry = tuple[str, dict[str, str]]

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
#: Longest single XREADGROUP/XREAD block, well under the store's socket timeout.
MAX_BLOCK_MS = 1000
#: Fields added to an entry moved to a dead-letter stream.
DEAD_ID, DEAD_STREAM, DEAD_GROUP, DEAD_REASON, DEAD_DELIVERIES = (
    "dead.id", "dead.stream", "dead.group", "dead.reason", "dead.deliveries",
)  # fmt: skip


@contextlib.contextmanager
def unreachable_as_error(store: Store) -> Iterator[None]:
    """Turn redis connection problems inside the block into `StoreUnavailable`."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise StoreUnavailable(f"Redis at {redacted(store.url)} is unreachable: {exc}") from None


def async_unavailable_as_error(
    fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """`unavailable_as_error` for coroutine methods of a class holding `self.store`."""

    @functools.wraps(fn)
    async def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        with unreachable_as_error(self.store):  # type: ignore[attr-defined]
            return await fn(self, *args, **kwargs)

    return wrapper


async def cancel_and_wait(task: asyncio.Task[Any], retry_s: float = 0.1) -> None:
    """Cancel a task that reads Redis and wait for it to end.

    redis.asyncio can absorb a cancellation while it drops the connection of the command it
    interrupted, and then sit in a socket wait; so cancel again until the task is done.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())


def after(stream_id: str) -> str:
    """An exclusive range bound: entries strictly after (or before) `stream_id`."""
    return f"({stream_id}"


def at_ms(ms: int) -> str:
    """The first possible stream id at a time in milliseconds since the epoch."""
    return f"{int(ms)}-0"


async def append(store: Store, stream_key: str, fields: Mapping[str, str], maxlen: int) -> str:
    """XADD one entry, trimming the stream to about `maxlen`; returns its id.

    Raises:
        StoreUnavailable: Redis cannot be reached.
    """
    with unreachable_as_error(store):
        entry_id = str(await store.async_redis().xadd(stream_key, dict(fields), maxlen=maxlen))
    metrics.MESSAGES_SENT.inc(kind=metrics.stream_kind(stream_key))
    return entry_id


async def append_many(
    store: Store, entries: Iterable[tuple[str, Mapping[str, str]]], maxlen: int
) -> list[str]:
    """XADD many (stream, fields) entries in one round trip and atomically; returns their ids.

    One script call rather than a pipeline of XADDs: redis.asyncio spends tens of
    microseconds of Python per pipelined command (packing, a timeout per reply), which
    would cost a batch of small messages half its throughput.

    Raises:
        StoreUnavailable: Redis cannot be reached.
    """
    entries = list(entries)
    ids: list[str] = []
    with unreachable_as_error(store):
        for first in range(0, len(entries), _SCRIPT_BATCH):
            chunk = entries[first : first + _SCRIPT_BATCH]
            args: list[str | int] = [maxlen]
            for _, fields in chunk:
                args.append(len(fields))
                for name, value in fields.items():
                    args += (name, value)
            keys = [stream_key for stream_key, _ in chunk]
            ids += [str(i) for i in await _script(store, _APPEND_MANY, keys, args)]
    for stream_key, _ in entries:
        metrics.MESSAGES_SENT.inc(kind=metrics.stream_kind(stream_key))
    return ids


#: KEYS: one stream per entry; ARGV: maxlen, then per entry its field count and pairs.
_APPEND_MANY = """
local maxlen, ids, a = ARGV[1], {}, 2
for i = 1, #KEYS do
  local n = tonumber(ARGV[a])
  local args = {'XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*'}
  for j = 1, 2 * n do args[6 + j] = ARGV[a + j] end
  a = a + 1 + 2 * n
  ids[i] = redis.call(unpack(args))
end
return ids
"""
#: Entries per script call, so one call never holds the server for long.
_SCRIPT_BATCH = 500


async def _script(store: Store, source: str, keys: list[str], args: list[str | int]) -> Any:
    """EVALSHA, loading the script first if the server does not know it yet."""
    client = store.async_redis()
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        await client.script_load(source)
        return await client.evalsha(sha, len(keys), *keys, *args)


async def last_id(store: Store, stream_key: str) -> str:
    """The id of the newest entry, or "0-0" for an empty or missing stream.

    Raises:
        StoreUnavailable: Redis cannot be reached.
    """
    with unreachable_as_error(store):
        rows = await store.async_redis().xrevrange(stream_key, count=1)
    return str(rows[0][0]) if rows else "0-0"


@dataclass(frozen=True, slots=True)
class Page:
    """Entries of one history page; `next` continues it (as `after(next)` for `start`)."""

    entries: list[Entry]
    next: str | None


async def history(
    store: Store,
    stream_key: str,
    *,
    start: str = "-",
    end: str = "+",
    count: int = 50,
    reverse: bool = False,
) -> Page:
    """A page of entries between `start` and `end` (ids, `at_ms(...)`, or `after(id)`).

    Oldest first, or newest first with `reverse`; `next` is set only when more remain: pass
    `after(page.next)` as `start` (as `end` when reversed) for the next page.

    Raises:
        StoreUnavailable: Redis cannot be reached.
    """
    client = store.async_redis()
    with unreachable_as_error(store):
        try:
            if reverse:
                rows = await client.xrevrange(stream_key, max=end, min=start, count=count + 1)
            else:
                rows = await client.xrange(stream_key, min=start, max=end, count=count + 1)
        except redis.ResponseError as exc:
            # An exclusive bound past either end of the id space ("(0-0" as an end, or
            # after the largest id) holds nothing; Redis calls it an invalid interval.
            if "for the interval" not in str(exc):
                raise
            rows = []
    more = len(rows) > count
    rows = rows[:count]
    return Page([(str(i), f) for i, f in rows], str(rows[-1][0]) if more and rows else None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry handed to a reader; `delivery_count` > 1 means a redelivery."""

    stream: str
    id: str
    fields: dict[str, str]
    delivery_count: int = 1


class GroupReader:
    """One consumer of a consumer group on one stream: at-least-once, with dead-lettering.

    Acknowledge each delivery with `ack` after handling it. Entries not acknowledged within
    `claim_idle_ms` are redelivered to whichever reader of the group asks next; after
    `max_deliveries` deliveries an entry moves to `dead_letter_key` instead.
    """

    def __init__(
        self,
        store: Store,
        stream_key: str,
        group: str,
        consumer: str,
        *,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        dead_letter_key: str | None = None,
        dead_letter_maxlen: int = 10_000,
        delete_on_ack: bool = False,
    ) -> None:
        """Raises: SpecInvalid: a limit is out of range."""
        problems = [
            f"{name} must be at least 1, not {value!r}"
            for name, value in (
                ("claim_idle_ms", claim_idle_ms),
                ("max_deliveries", max_deliveries),
            )
            if value < 1
        ]
        if problems:
            raise SpecInvalid(f"reader of {stream_key!r}", problems)
        self.store = store
        self.stream_key = stream_key
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead_letter_key = dead_letter_key or f"{stream_key}:dead"
        self.dead_letter_maxlen = dead_letter_maxlen
        #: Queues delete what is done so their length is their backlog.
        self.delete_on_ack = delete_on_ack
        #: Looking for stale entries costs a round trip, so only this often.
        self._reclaim_every_s = min(claim_idle_ms / 2, 5000) / 1000
        self._next_reclaim = 0.0
        self._cursor = "0-0"
        self._group_ready = False

    @async_unavailable_as_error
    async def ensure_group(self, start_id: str = "0") -> None:
        """Create the group (and the stream) unless it exists; "0": all entries, "$": new only.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        try:
            await self.store.async_redis().xgroup_create(
                self.stream_key, self.group, start_id, mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    @async_unavailable_as_error
    async def read(self, count: int = 100, block_ms: int | None = None) -> list[Delivery]:
        """Up to `count` deliveries: reclaimed stale ones first, then new ones.

        Waits up to `block_ms` for something to arrive (None or 0: not at all).

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        if not self._group_ready:
            await self.ensure_group()
        deadline = time.monotonic() + (block_ms or 0) / 1000
        while True:
            out: list[Delivery] = []
            if time.monotonic() >= self._next_reclaim:
                out = await self._group_call(self._reclaim, count)
            wait_ms = 0 if out else max(0, int((deadline - time.monotonic()) * 1000))
            wait_ms = min(wait_ms, MAX_BLOCK_MS, int(self._reclaim_every_s * 1000) or 1)
            if len(out) < count:
                out += await self._group_call(self._read_new, count - len(out), wait_ms)
            if out or time.monotonic() >= deadline:
                metrics.count_deliveries(self.stream_key, [d.delivery_count for d in out])
                return out

    @async_unavailable_as_error
    async def ack(self, *ids: str) -> int:
        """Acknowledge handled entries; returns how many were still pending.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        if not ids:
            return 0
        if not self.delete_on_ack:
            return int(await self.store.async_redis().xack(self.stream_key, self.group, *ids))
        pipe = self.store.async_redis().pipeline(transaction=True)
        pipe.xack(self.stream_key, self.group, *ids)
        pipe.xdel(self.stream_key, *ids)
        return int((await pipe.execute())[0])

    @async_unavailable_as_error
    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move an entry no handler can use (say, malformed) to the dead-letter stream now.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        await self._bury([(delivery.id, delivery.fields, delivery.delivery_count)], reason)

    async def _group_call(self, fn: Callable[..., Coroutine[Any, Any, R]], *args: Any) -> R:
        """Run `fn`, recreating the group once if the stream was deleted under us."""
        try:
            return await fn(*args)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return await fn(*args)

    async def _read_new(self, count: int, block_ms: int) -> list[Delivery]:
        reply = await self.store.async_redis().xreadgroup(
            self.group, self.consumer, {self.stream_key: ">"}, count=count, block=block_ms or None
        )
        return [
            Delivery(self.stream_key, str(i), fields, 1)
            for _, entries in stream_replies(reply)
            for i, fields in entries
        ]

    async def _reclaim(self, count: int) -> list[Delivery]:
        """Claim entries other readers left idle; bury those delivered too often."""
        client = self.store.async_redis()
        cursor, claimed, *_ = await client.xautoclaim(
            self.stream_key, self.group, self.consumer, self.claim_idle_ms, self._cursor, count
        )
        self._cursor = str(cursor)
        # A cursor past 0-0 means more of the pending list is left to scan: look again soon.
        wait_s = 0 if self._cursor != "0-0" else self._reclaim_every_s
        self._next_reclaim = time.monotonic() + wait_s
        # Redis 6.2 returns trimmed entries with no fields; later versions drop them itself.
        gone = [str(i) for i, fields in claimed if fields is None]
        live = [(str(i), fields) for i, fields in claimed if fields is not None]
        if gone:
            await client.xack(self.stream_key, self.group, *gone)
        if not live:
            return []
        counts = await self._delivery_counts([i for i, _ in live])
        fresh = [Delivery(self.stream_key, i, f, counts.get(i, 2)) for i, f in live]
        dead = [d for d in fresh if d.delivery_count > self.max_deliveries]
        if dead:
            reason = f"not acknowledged after {self.max_deliveries} deliveries"
            await self._bury([(d.id, d.fields, d.delivery_count - 1) for d in dead], reason)
            log.warning(
                "dead-lettered %d entries of %s",
                len(dead),
                self.stream_key,
                extra={"stream": self.stream_key, "group": self.group},
            )
        return [d for d in fresh if d.delivery_count <= self.max_deliveries]

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        pipe = self.store.async_redis().pipeline(transaction=False)
        for i in ids:
            pipe.xpending_range(self.stream_key, self.group, i, i, 1)
        return {
            str(row["message_id"]): int(row["times_delivered"])
            for rows in await pipe.execute()
            for row in rows
        }

    async def _bury(self, entries: list[tuple[str, dict[str, str], int]], reason: str) -> None:
        """XADD each entry to the dead-letter stream with why, and XACK it, atomically."""
        pipe = self.store.async_redis().pipeline(transaction=True)
        for entry_id, fields, deliveries in entries:
            pipe.xadd(
                self.dead_letter_key,
                {
                    **fields,
                    DEAD_ID: entry_id,
                    DEAD_STREAM: self.stream_key,
                    DEAD_GROUP: self.group,
                    DEAD_REASON: reason,
                    DEAD_DELIVERIES: str(deliveries),
                },
                maxlen=self.dead_letter_maxlen,
            )
        ids = [entry_id for entry_id, _, _ in entries]
        pipe.xack(self.stream_key, self.group, *ids)
        if self.delete_on_ack:
            pipe.xdel(self.stream_key, *ids)
        await pipe.execute()
        metrics.MESSAGES_DEAD.inc(len(ids), kind=metrics.stream_kind(self.stream_key))


def stream_replies(reply: Any) -> list[tuple[str, list[Entry]]]:
    """XREAD/XREADGROUP replies as (stream, entries) under RESP2 (a list) and RESP3 (a dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(str(k), v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(str(k), v) for k, v in reply]


__all__ = [
    "Delivery",
    "Entry",
    "GroupReader",
    "Page",
    "after",
    "append",
    "append_many",
    "async_unavailable_as_error",
    "at_ms",
    "cancel_and_wait",
    "history",
    "last_id",
    "stream_replies",
    "unreachable_as_error",
]
