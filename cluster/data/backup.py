"""Backups of a tenant's whole state: every key under its prefix, as Parquet, and back.

Every key under the tenant prefix, grouped by Redis type, as Parquet files under
`<backup_root>/<backup_id>/` (`keys`, `string`, `hash`, `list`, `set`, `zset`, `stream`,
`stream_group`, `stream_consumer`, `stream_pending`), with keys relative to the tenant so
a backup restores into any tenant, the Parquet files of large Arrow data objects under
`blobs/`, and `manifest.json` (written last) with counts and a sha256 over a canonical
dump. The snapshot is consistent per key, not across keys: quiesce writers (`dafnck down`)
for a point-in-time copy. TTLs are kept as the time left when the backup was taken.
Keys become rows and rows keys again in `cluster.data.keys`.

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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import redis
from pydantic import ValidationError

from cluster.blobs import filesystem
from cluster.data.keys import SCHEMAS, WRITERS, KeyDump, Sinks, checksum_of, read_keys, text
from cluster.data.models import (
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
    from cluster.data.objectstore import ObjectStore

log = logging.getLogger(__name__)
_BATCH = 500


#: Keys (relative to the tenant) a backup never holds and a restore never writes.
PROTECTED_PREFIXES = (b"auth:", b"audit:", b"idempotency:")
PROTECTED_KEYS = (b"auth", b"audit")


def protected(key: bytes) -> bool:
    """Whether a tenant-relative key is a security record (credentials, audit, idempotency)."""
    return key in PROTECTED_KEYS or key.startswith(PROTECTED_PREFIXES)


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

    def __init__(self, store: Store, objects: ObjectStore, backup_root: str) -> None:
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
        sinks = Sinks(self.fs, directory)
        digests: dict[bytes, bytes] = {}
        by_type: Counter[str] = Counter()
        by_prefix: Counter[str] = Counter()
        blob_paths: list[str] = []
        ttl_keys = 0
        try:
            for batch in self._scan(client, criteria.prefixes):
                for d in read_keys(client, batch, self.prefix):
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
        return checksum_of(digests), counts, blobs

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
            sample.append(text(key))
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
        data = pq.read_table(path, filesystem=self.fs, schema=SCHEMAS[table])
        return list(zip(*(data.column(n).to_pylist() for n in data.schema.names), strict=True))

    def _load(self, manifest: BackupManifest) -> tuple[list[KeyDump], dict[bytes, bytes]]:
        """The backup's keys, checked against the manifest before anything is written."""
        dumps = {row[0]: KeyDump(*row) for row in self._rows(manifest, "keys")}
        for table in SCHEMAS:
            for key, *row in self._rows(manifest, table) if table != "keys" else []:
                if key not in dumps:
                    raise Conflict(
                        f"backup {manifest.backup_id!r} is damaged: {table} rows of unknown key {key!r}"
                    )
                dumps[key].add(table, tuple(row))
        digests = {key: d.digest() for key, d in dumps.items()}
        if checksum_of(digests) != manifest.checksum:
            raise Conflict(
                f"backup {manifest.backup_id!r} is damaged: its files give {checksum_of(digests)}, "
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
        self, client: Any, manifest: BackupManifest, dumps: list[KeyDump], overwrite: bool
    ) -> None:
        pipe = client.pipeline(transaction=False)
        try:
            for d in dumps:
                key = self.prefix + d.key
                if overwrite:
                    pipe.delete(key)
                WRITERS[d.type](pipe, key, d)
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
                d.key: d.digest() for d in read_keys(client, keys[i : i + _BATCH], self.prefix)
            }
        checksum, wanted = checksum_of(actual), checksum_of(expected)
        if checksum != wanted:
            differ = sorted(text(k) for k in expected if actual.get(k) != expected[k])
            raise Conflict(
                f"restored content of backup {manifest.backup_id!r} differs from its manifest "
                f"({checksum} != {wanted}); keys that differ: {differ[:5]}"
            )
        return checksum
