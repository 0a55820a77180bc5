"""A tenant's Redis keys as rows of Parquet tables, and back: what a backup is made of.

Every row starts with the key relative to the tenant prefix; one table per Redis type
(`string`, `hash`, `list`, `set`, `zset`, `stream` and its groups, consumers and pending
entries) plus `keys` (type, TTL left, a stream's last id). A key's digest covers its
content canonically, so a backup and the state restored from it compare by checksum.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import redis

from cluster.errors import Conflict

_B, _S = pa.binary(), pa.string()
#: One Parquet file per table; every row starts with the key relative to the tenant prefix.
SCHEMAS: dict[str, pa.Schema] = {
    "keys": pa.schema([("key", _B), ("type", _S), ("ttl_ms", pa.int64()), ("stream_last_id", _S)]),
    "string": pa.schema([("key", _B), ("value", _B)]),
    "hash": pa.schema([("key", _B), ("field", _B), ("value", _B)]),
    "list": pa.schema([("key", _B), ("index", pa.int64()), ("value", _B)]),
    "set": pa.schema([("key", _B), ("member", _B)]),
    "zset": pa.schema([("key", _B), ("member", _B), ("score", pa.float64())]),
    "stream": pa.schema(
        [("key", _B), ("id", _S), ("position", pa.int32()), ("field", _B), ("value", _B)]
    ),
    "stream_group": pa.schema([("key", _B), ("group", _B), ("last_delivered_id", _S)]),
    "stream_consumer": pa.schema([("key", _B), ("group", _B), ("consumer", _B)]),
    "stream_pending": pa.schema(
        [
            ("key", _B),
            ("group", _B),
            ("id", _S),
            ("consumer", _B),
            ("deliveries", pa.int64()),
            ("idle_ms", pa.int64()),
        ]
    ),
}
#: Trailing columns left out of the checksum: they change by themselves (idle time).
_VOLATILE = {"stream_pending": 1}
_SCRATCH_GROUP = "dafnck-restore"


def _feed(h: Any, *parts: Any) -> None:
    """Length-prefixed, so no two different sequences hash alike."""
    for part in parts:
        raw = (
            part
            if isinstance(part, bytes)
            else (part.hex() if isinstance(part, float) else str(part)).encode()
        )
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)


@dataclass
class KeyDump:
    """One key's content as table rows (without the key column)."""

    key: bytes
    type: str
    ttl_ms: int | None = None
    stream_last_id: str | None = None
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        self.rows.setdefault(table, []).append(row)

    def digest(self) -> bytes:
        h = hashlib.sha256()
        _feed(h, self.type, "ttl" if self.ttl_ms is not None else "", self.stream_last_id or "")
        for table in sorted(self.rows):
            cut = len(SCHEMAS[table]) - 1 - _VOLATILE.get(table, 0)
            for row in sorted(r[:cut] for r in self.rows[table]):
                _feed(h, table, *row)
        return h.digest()


def checksum_of(digests: dict[bytes, bytes]) -> str:
    h = hashlib.sha256()
    for key in sorted(digests):
        _feed(h, key, digests[key])
    return f"sha256:{h.hexdigest()}"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_READERS: dict[str, Callable[[Any, bytes], Any]] = {
    "string": lambda p, k: p.get(k),
    "hash": lambda p, k: p.hgetall(k),
    "list": lambda p, k: p.lrange(k, 0, -1),
    "set": lambda p, k: p.smembers(k),
    "zset": lambda p, k: p.zrange(k, 0, -1, withscores=True),
}
_ROWS: dict[str, Callable[[Any], list[tuple[Any, ...]]]] = {
    "string": lambda v: [] if v is None else [(v,)],
    "hash": lambda v: list(v.items()),
    "list": lambda v: list(enumerate(v)),
    "set": lambda v: [(m,) for m in v],
    "zset": lambda v: [(m, float(s)) for m, s in v],
}


def read_keys(client: Any, keys: list[bytes], prefix: bytes) -> list[KeyDump]:
    """The content of `keys` (a key gone meanwhile is left out)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    head = pipe.execute()
    pipe, simple, dumps = client.pipeline(transaction=False), [], []
    for i, key in enumerate(keys):
        kind, ttl = text(head[2 * i]), head[2 * i + 1]
        if kind == "none" or ttl == -2:
            continue
        dump = KeyDump(key[len(prefix) :], kind, ttl if ttl >= 0 else None)
        if kind == "stream":
            if _read_stream(client, key, dump):
                dumps.append(dump)
        elif kind in _READERS:
            _READERS[kind](pipe, key)
            simple.append(dump)
        else:
            raise Conflict(
                f"cannot back up key {text(key)!r} of type {kind!r}: only string, hash, list, set, "
                "zset and stream keys are supported"
            )
    for dump, value in zip(simple, pipe.execute(), strict=True):
        rows = _ROWS[dump.type](value)
        if rows:
            dump.rows[dump.type] = rows
            dumps.append(dump)
    return dumps


def _read_stream(client: Any, key: bytes, dump: KeyDump) -> bool:
    try:
        dump.stream_last_id = text(client.xinfo_stream(key)["last-generated-id"])
    except redis.ResponseError:
        return False  # deleted since TYPE
    ids: set[str] = set()
    start = "-"
    while got := client.xrange(key, min=start, count=1000):
        for eid, fields in got:
            ids.add(text(eid))
            for position, (name, value) in enumerate(fields.items()):
                dump.add("stream", (text(eid), position, name, value))
        start = f"({text(got[-1][0])}"
    for group in client.xinfo_groups(key):
        name = group["name"]
        dump.add("stream_group", (name, text(group["last-delivered-id"])))
        for consumer in client.xinfo_consumers(key, name):
            dump.add("stream_consumer", (name, consumer["name"]))
        start = "-"
        while pending := client.xpending_range(key, name, min=start, max="+", count=1000):
            # A pending entry deleted from the stream can never be delivered: not kept.
            dump.rows.setdefault("stream_pending", []).extend(
                (
                    name,
                    text(p["message_id"]),
                    p["consumer"],
                    p["times_delivered"],
                    p["time_since_delivered"],
                )
                for p in pending
                if text(p["message_id"]) in ids
            )
            start = f"({text(pending[-1]['message_id'])}"
    return True


def _id_order(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def _write_stream(pipe: Any, key: bytes, d: KeyDump) -> None:
    entries: dict[str, list[tuple[int, bytes, bytes]]] = {}
    for eid, position, name, value in d.rows.get("stream", []):
        entries.setdefault(eid, []).append((position, name, value))
    if not entries:  # an empty stream (e.g. a queue made with MKSTREAM) still exists
        pipe.xgroup_create(key, _SCRATCH_GROUP, id="$", mkstream=True)
        pipe.xgroup_destroy(key, _SCRATCH_GROUP)
    for eid in sorted(entries, key=_id_order):
        pipe.xadd(key, {name: value for _, name, value in sorted(entries[eid])}, id=eid)
    pipe.execute_command("XSETID", key, d.stream_last_id or "0-0")
    for group, last_id in d.rows.get("stream_group", []):
        pipe.xgroup_create(key, group, id=last_id)
    for group, consumer in d.rows.get("stream_consumer", []):
        pipe.xgroup_createconsumer(key, group, consumer)
    for group, eid, consumer, deliveries, idle_ms in d.rows.get("stream_pending", []):
        pipe.xclaim(
            key,
            group,
            consumer,
            0,
            [eid],
            idle=idle_ms,
            retrycount=deliveries,
            force=True,
            justid=True,
        )


WRITERS: dict[str, Callable[[Any, bytes, KeyDump], Any]] = {
    "string": lambda p, k, d: p.set(k, d.rows["string"][0][0]),
    "hash": lambda p, k, d: p.hset(k, mapping=dict(d.rows["hash"])),
    "list": lambda p, k, d: p.rpush(k, *[v for _, v in sorted(d.rows["list"])]),
    "set": lambda p, k, d: p.sadd(k, *[m for (m,) in d.rows["set"]]),
    "zset": lambda p, k, d: p.zadd(k, dict(d.rows["zset"])),
    "stream": _write_stream,
}


class Sinks:
    """Rows buffered per table and appended to `<directory>/<table>.parquet` as they come."""

    def __init__(self, fs: pafs.FileSystem, directory: str) -> None:
        self.fs, self.directory = fs, directory
        self.buffers: dict[str, list[tuple[Any, ...]]] = {t: [] for t in SCHEMAS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.rows: Counter[str] = Counter()

    def add(self, d: KeyDump) -> None:
        self._put("keys", (d.key, d.type, d.ttl_ms, d.stream_last_id))
        for table, rows in d.rows.items():
            for row in rows:
                self._put(table, (d.key, *row))

    def _put(self, table: str, row: tuple[Any, ...]) -> None:
        self.buffers[table].append(row)
        if len(self.buffers[table]) >= 10_000:
            self._flush(table)

    def _flush(self, table: str) -> None:
        rows, schema = self.buffers[table], SCHEMAS[table]
        if not rows:
            return
        columns = [
            pa.array(col, type=f.type)
            for col, f in zip(zip(*rows, strict=True), schema, strict=True)
        ]
        if table not in self.writers:
            path = f"{self.directory}/{table}.parquet"
            self.writers[table] = pq.ParquetWriter(path, schema, filesystem=self.fs)
        self.writers[table].write_table(pa.Table.from_arrays(columns, schema=schema))
        self.rows[table] += len(rows)
        rows.clear()

    def close(self) -> dict[str, int]:
        try:
            for table in self.buffers:
                self._flush(table)
        finally:
            for writer in self.writers.values():
                writer.close()
        return dict(self.rows)


__all__ = ["SCHEMAS", "WRITERS", "KeyDump", "Sinks", "checksum_of", "read_keys", "text"]
