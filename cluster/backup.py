"""Backups of a tenant's whole state: every key under its prefix, as Parquet, and back.

Every key under the tenant prefix, grouped by Redis type, as Parquet files under
`<backup_root>/<backup_id>/` (`keys`, `string`, `hash`, `list`, `set`, `zset`, `stream`,
`stream_group`, `stream_consumer`, `stream_pending`), with keys relative to the tenant so
a backup restores into any tenant, the Parquet files of large Arrow data objects under
`blobs/`, and `manifest.json` (written last) with counts and a sha256 over a canonical
dump. The snapshot is consistent per key, not across keys: quiesce writers (`dafnck down`)
for a point-in-time copy. TTLs are kept as the time left when the backup was taken.

A backup holds the tenant's workload state, never its security records: API keys, users
and their login state (`auth:*`), the audit (`audit`, `audit:*`) and idempotency records
(`idempotency:*`) are left out of every backup and never written by a restore, even from
a backup made before this rule (whose files still hold them: they are checked against the
manifest's checksum, then skipped). So a restore never brings back a revoked key, an old
password or a shorter audit. Backups live under the tenant's own root,
`<blobs>/<tenant>/backups/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import redis
from pydantic import ValidationError

from cluster.blobs import filesystem
from cluster.data_models import (
    BACKUP_ID,
    BackupCounts,
    BackupCriteria,
    BackupInfo,
    BackupManifest,
    BackupResult,
    BlobEntry,
    RestoreResult,
)
from cluster.errors import Conflict, InputInvalid, NotFound
from cluster.store import Store, unavailable_as_error

if TYPE_CHECKING:
    from cluster.data import _Objects

log = logging.getLogger(__name__)
_BATCH = 500


#: Keys (relative to the tenant) a backup never holds and a restore never writes.
PROTECTED_PREFIXES = (b"auth:", b"audit:", b"idempotency:")
PROTECTED_KEYS = (b"auth", b"audit")


def protected(key: bytes) -> bool:
    """Whether a tenant-relative key is a security record (credentials, audit, idempotency)."""
    return key in PROTECTED_KEYS or key.startswith(PROTECTED_PREFIXES)


# -- snapshots -------------------------------------------------------------------------

_B, _S = pa.binary(), pa.string()
#: One Parquet file per table; every row starts with the key relative to the tenant prefix.
_SCHEMAS: dict[str, pa.Schema] = {
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
class _Dump:
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
            cut = len(_SCHEMAS[table]) - 1 - _VOLATILE.get(table, 0)
            for row in sorted(r[:cut] for r in self.rows[table]):
                _feed(h, table, *row)
        return h.digest()


def _checksum(digests: dict[bytes, bytes]) -> str:
    h = hashlib.sha256()
    for key in sorted(digests):
        _feed(h, key, digests[key])
    return f"sha256:{h.hexdigest()}"


def _s(value: bytes | str) -> str:
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


def _read_keys(client: Any, keys: list[bytes], prefix: bytes) -> list[_Dump]:
    """The content of `keys` (a key gone meanwhile is left out)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    head = pipe.execute()
    pipe, simple, dumps = client.pipeline(transaction=False), [], []
    for i, key in enumerate(keys):
        kind, ttl = _s(head[2 * i]), head[2 * i + 1]
        if kind == "none" or ttl == -2:
            continue
        dump = _Dump(key[len(prefix) :], kind, ttl if ttl >= 0 else None)
        if kind == "stream":
            if _read_stream(client, key, dump):
                dumps.append(dump)
        elif kind in _READERS:
            _READERS[kind](pipe, key)
            simple.append(dump)
        else:
            raise Conflict(
                f"cannot back up key {_s(key)!r} of type {kind!r}: only string, hash, list, set, "
                "zset and stream keys are supported"
            )
    for dump, value in zip(simple, pipe.execute(), strict=True):
        rows = _ROWS[dump.type](value)
        if rows:
            dump.rows[dump.type] = rows
            dumps.append(dump)
    return dumps


def _read_stream(client: Any, key: bytes, dump: _Dump) -> bool:
    try:
        dump.stream_last_id = _s(client.xinfo_stream(key)["last-generated-id"])
    except redis.ResponseError:
        return False  # deleted since TYPE
    ids: set[str] = set()
    start = "-"
    while got := client.xrange(key, min=start, count=1000):
        for eid, fields in got:
            ids.add(_s(eid))
            for position, (name, value) in enumerate(fields.items()):
                dump.add("stream", (_s(eid), position, name, value))
        start = f"({_s(got[-1][0])}"
    for group in client.xinfo_groups(key):
        name = group["name"]
        dump.add("stream_group", (name, _s(group["last-delivered-id"])))
        for consumer in client.xinfo_consumers(key, name):
            dump.add("stream_consumer", (name, consumer["name"]))
        start = "-"
        while pending := client.xpending_range(key, name, min=start, max="+", count=1000):
            # A pending entry deleted from the stream can never be delivered: not kept.
            dump.rows.setdefault("stream_pending", []).extend(
                (
                    name,
                    _s(p["message_id"]),
                    p["consumer"],
                    p["times_delivered"],
                    p["time_since_delivered"],
                )
                for p in pending
                if _s(p["message_id"]) in ids
            )
            start = f"({_s(pending[-1]['message_id'])}"
    return True


def _id_order(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def _write_stream(pipe: Any, key: bytes, d: _Dump) -> None:
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


_WRITERS: dict[str, Callable[[Any, bytes, _Dump], Any]] = {
    "string": lambda p, k, d: p.set(k, d.rows["string"][0][0]),
    "hash": lambda p, k, d: p.hset(k, mapping=dict(d.rows["hash"])),
    "list": lambda p, k, d: p.rpush(k, *[v for _, v in sorted(d.rows["list"])]),
    "set": lambda p, k, d: p.sadd(k, *[m for (m,) in d.rows["set"]]),
    "zset": lambda p, k, d: p.zadd(k, dict(d.rows["zset"])),
    "stream": _write_stream,
}


class _Sinks:
    """Rows buffered per table and appended to `<directory>/<table>.parquet` as they come."""

    def __init__(self, fs: pafs.FileSystem, directory: str) -> None:
        self.fs, self.directory = fs, directory
        self.buffers: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _SCHEMAS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.rows: Counter[str] = Counter()

    def add(self, d: _Dump) -> None:
        self._put("keys", (d.key, d.type, d.ttl_ms, d.stream_last_id))
        for table, rows in d.rows.items():
            for row in rows:
                self._put(table, (d.key, *row))

    def _put(self, table: str, row: tuple[Any, ...]) -> None:
        self.buffers[table].append(row)
        if len(self.buffers[table]) >= 10_000:
            self._flush(table)

    def _flush(self, table: str) -> None:
        rows, schema = self.buffers[table], _SCHEMAS[table]
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


def _glob_escape(raw: bytes) -> bytes:
    return re.sub(rb"([\\*?\[\]])", rb"\\\1", raw)


def _copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> tuple[int, str]:
    """Copy one file between filesystems; (bytes, sha256 hex) of what was copied."""
    h, size = hashlib.sha256(), 0
    dst_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    with src_fs.open_input_stream(src) as fin, dst_fs.open_output_stream(dst) as fout:
        while chunk := fin.read(1 << 20):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class _Snapshots:
    """Backups of a tenant's keys as Parquet files, and their restore."""

    def __init__(self, store: Store, objects: _Objects, backup_root: str) -> None:
        self.store = store
        self.objects = objects
        self.root_uri = backup_root.rstrip("/")
        self.fs, self.root = filesystem(backup_root)
        self.prefix = store.key("").encode()

    def _client(self) -> Any:
        """A client on the same server that returns bytes, so any value survives as it is."""
        kwargs = self.store.redis.connection_pool.connection_kwargs
        return redis.Redis.from_url(
            self.store.url,
            decode_responses=False,
            socket_timeout=kwargs.get("socket_timeout"),
            socket_connect_timeout=kwargs.get("socket_connect_timeout"),
        )

    def _scan(self, client: Any, prefixes: list[str]) -> Iterator[list[bytes]]:
        seen: set[bytes] = set()
        for prefix in prefixes or [""]:
            batch: list[bytes] = []
            for key in client.scan_iter(
                match=_glob_escape(self.prefix + prefix.encode()) + b"*", count=1000
            ):
                if key not in seen and not protected(key[len(self.prefix) :]):
                    seen.add(key)
                    batch.append(key)
                if len(batch) >= _BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch

    @unavailable_as_error
    def backup(self, criteria: BackupCriteria) -> BackupResult:
        started = time.time()
        backup_id = (
            f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-{uuid.uuid4().hex[:8]}"
        )
        directory = f"{self.root}/{backup_id}"
        self.fs.create_dir(directory, recursive=True)
        client = self._client()
        try:
            checksum, counts, blobs = self._dump(client, criteria, directory)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_dir(directory)
            raise
        finally:
            client.close()
        manifest = BackupManifest(
            backup_id=backup_id,
            tenant=self.store.tenant,
            label=criteria.label,
            created_at=started,
            uri=f"{self.root_uri}/{backup_id}",
            prefixes=criteria.prefixes,
            counts=counts,
            checksum=checksum,
            blobs=blobs,
        )
        with self.fs.open_output_stream(f"{directory}/manifest.json") as out:
            out.write(manifest.model_dump_json(indent=2).encode())
        log.info("backup %s of tenant %s: %d keys", backup_id, self.store.tenant, counts.keys)
        info = BackupInfo.model_validate(manifest.model_dump())
        return BackupResult(info=info, duration_s=time.time() - started)

    def _dump(
        self, client: Any, criteria: BackupCriteria, directory: str
    ) -> tuple[str, BackupCounts, list[BlobEntry]]:
        sinks = _Sinks(self.fs, directory)
        digests: dict[bytes, bytes] = {}
        by_type: Counter[str] = Counter()
        by_prefix: Counter[str] = Counter()
        blob_paths: list[str] = []
        ttl_keys = 0
        try:
            for batch in self._scan(client, criteria.prefixes):
                for d in _read_keys(client, batch, self.prefix):
                    digests[d.key] = d.digest()
                    sinks.add(d)
                    by_type[d.type] += 1
                    ttl_keys += d.ttl_ms is not None
                    by_prefix[d.key.split(b":", 1)[0].decode(errors="replace")] += 1
                    if criteria.include_blobs and d.key.startswith(b"data:obj:"):
                        blob_paths += filter(
                            None, [self.objects.blob_in(dict(d.rows.get("hash", [])))]
                        )
        finally:
            rows = sinks.close()
        blobs = [b for b in (self._save_blob(rel, directory) for rel in blob_paths) if b]
        counts = BackupCounts(
            keys=len(digests),
            by_type=dict(by_type),
            by_prefix=dict(by_prefix),
            rows=rows,
            ttl_keys=ttl_keys,
            blobs=len(blobs),
        )
        return _checksum(digests), counts, blobs

    def _save_blob(self, rel: str, directory: str) -> BlobEntry | None:
        try:
            size, sha = _copy(
                self.objects.fs, self.objects.blob_path(rel), self.fs, f"{directory}/blobs/{rel}"
            )
        except (FileNotFoundError, InputInvalid) as exc:
            log.warning("data blob %s is left out of the backup: %s", rel, exc)
            return None
        return BlobEntry(path=rel, bytes=size, sha256=sha)

    def manifest(self, backup_id: str) -> BackupManifest:
        if not re.fullmatch(BACKUP_ID, backup_id):
            raise InputInvalid("restore", [f"backup id {backup_id!r} must match {BACKUP_ID}"])
        try:
            with self.fs.open_input_stream(f"{self.root}/{backup_id}/manifest.json") as fin:
                text = fin.read()
        except FileNotFoundError:
            raise NotFound(
                f"backup {backup_id!r} does not exist under {self.root_uri} (or is incomplete: "
                "it has no manifest.json)"
            ) from None
        return BackupManifest.model_validate_json(text)

    def list_backups(self) -> list[BackupInfo]:
        infos = []
        for entry in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            if entry.type != pafs.FileType.Directory:
                continue
            try:
                manifest = self.manifest(entry.base_name)
            except (NotFound, InputInvalid):
                continue  # not a backup, or one still being written
            except ValidationError as exc:
                log.warning("backup %s has an unreadable manifest: %s", entry.base_name, exc)
                continue
            data = {**manifest.model_dump(), "uri": f"{self.root_uri}/{entry.base_name}"}
            infos.append(BackupInfo.model_validate(data))
        return sorted(infos, key=lambda i: i.created_at, reverse=True)

    @unavailable_as_error
    def restore(self, backup_id: str, into_empty: bool) -> RestoreResult:
        started = time.time()
        manifest = self.manifest(backup_id)
        client = self._client()
        try:
            if into_empty:
                self._refuse_if_not_empty(client)
            every, digests = self._load(manifest)
            dumps = [d for d in every if not protected(d.key)]
            for blob in manifest.blobs:
                self._restore_blob(manifest, blob)
            self._write(client, manifest, dumps, overwrite=not into_empty)
            checksum = self._verify(client, manifest, {d.key: digests[d.key] for d in dumps})
        finally:
            client.close()
        skipped = len(every) - len(dumps)
        log.info(
            "restored backup %s into tenant %s: %d keys (%d security records it held were kept "
            "as they are live)",
            backup_id, self.store.tenant, len(dumps), skipped,
        )  # fmt: skip
        return RestoreResult(
            backup_id=backup_id,
            tenant=self.store.tenant,
            keys=len(dumps),
            by_type=dict(Counter(d.type for d in dumps)),
            blobs=len(manifest.blobs),
            skipped_keys=skipped,
            checksum=checksum,
            duration_s=time.time() - started,
        )

    def _refuse_if_not_empty(self, client: Any) -> None:
        sample: list[str] = []
        for key in client.scan_iter(match=_glob_escape(self.prefix) + b"*", count=1000):
            if protected(key[len(self.prefix) :]):
                continue  # credentials and the audit are not state a restore replaces
            sample.append(_s(key))
            if len(sample) == 3:
                break
        if sample:
            raise Conflict(
                f"tenant {self.store.tenant!r} already has keys ({', '.join(map(repr, sample))}, ...): "
                "restore into an empty tenant, or pass into_empty=False to overwrite the keys the "
                "backup holds"
            )

    def _rows(self, manifest: BackupManifest, table: str) -> list[tuple[Any, ...]]:
        if not manifest.counts.rows.get(table):
            return []
        path = f"{self.root}/{manifest.backup_id}/{table}.parquet"
        data = pq.read_table(path, filesystem=self.fs, schema=_SCHEMAS[table])
        return list(zip(*(data.column(n).to_pylist() for n in data.schema.names), strict=True))

    def _load(self, manifest: BackupManifest) -> tuple[list[_Dump], dict[bytes, bytes]]:
        """The backup's keys, checked against the manifest before anything is written."""
        dumps = {row[0]: _Dump(*row) for row in self._rows(manifest, "keys")}
        for table in _SCHEMAS:
            for key, *row in self._rows(manifest, table) if table != "keys" else []:
                if key not in dumps:
                    raise Conflict(
                        f"backup {manifest.backup_id!r} is damaged: {table} rows of unknown key {key!r}"
                    )
                dumps[key].add(table, tuple(row))
        digests = {key: d.digest() for key, d in dumps.items()}
        if _checksum(digests) != manifest.checksum:
            raise Conflict(
                f"backup {manifest.backup_id!r} is damaged: its files give {_checksum(digests)}, "
                f"its manifest says {manifest.checksum}"
            )
        return list(dumps.values()), digests

    def _restore_blob(self, manifest: BackupManifest, blob: BlobEntry) -> None:
        target = self.objects.blob_path(blob.path)  # a relative name, or InputInvalid
        source = f"{self.root}/{manifest.backup_id}/blobs/{blob.path}"
        _, sha = _copy(self.fs, source, self.objects.fs, target)
        if sha != blob.sha256:
            raise Conflict(
                f"backup {manifest.backup_id!r} is damaged: blob {blob.path!r} has sha256 {sha}"
            )

    def _write(
        self, client: Any, manifest: BackupManifest, dumps: list[_Dump], overwrite: bool
    ) -> None:
        pipe = client.pipeline(transaction=False)
        try:
            for d in dumps:
                key = self.prefix + d.key
                if overwrite:
                    pipe.delete(key)
                _WRITERS[d.type](pipe, key, d)
                if d.ttl_ms is not None:
                    pipe.pexpire(key, max(d.ttl_ms, 1))
                if len(pipe) >= 1000:
                    pipe.execute()
            pipe.execute()
        except redis.ResponseError as exc:
            raise Conflict(f"restoring backup {manifest.backup_id!r} failed: {exc}") from None

    def _verify(self, client: Any, manifest: BackupManifest, expected: dict[bytes, bytes]) -> str:
        keys = [self.prefix + key for key in expected]
        actual: dict[bytes, bytes] = {}
        for i in range(0, len(keys), _BATCH):
            actual |= {
                d.key: d.digest() for d in _read_keys(client, keys[i : i + _BATCH], self.prefix)
            }
        checksum, wanted = _checksum(actual), _checksum(expected)
        if checksum != wanted:
            differ = sorted(_s(k) for k in expected if actual.get(k) != expected[k])
            raise Conflict(
                f"restored content of backup {manifest.backup_id!r} differs from its manifest "
                f"({checksum} != {wanted}); keys that differ: {differ[:5]}"
            )
        return checksum
