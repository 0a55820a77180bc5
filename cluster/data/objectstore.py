"""How data objects are kept: versioned hashes, secondary indexes and Parquet blobs.

Data objects (under `dafnck:<tenant>:data:`):

- `data:obj:<id>` hash: `meta` (JSON: id, version, times, metadata, format, blob) and
  `data` (JSON text with each sensitive field as `{"$enc": <Fernet token>}`, or an
  Arrow table as base64 Arrow IPC when it is at most `inline_max_bytes`). A larger table
  is a Parquet file `<blob_root>/<tenant>/data/<id>/v<version>.parquet` (via pyarrow.fs)
  and `meta.blob` (kept by the platform, never by the data) names it relative to the
  tenant's data directory; a name that is absolute or climbs out with ".." is refused.
  Files written before this layout, under `<blob_root>/data/<tenant>/`, are still read.
- `data:idx:created` sorted set (id by created_at) and sets `data:idx:kind:<k>`,
  `data:idx:name:<n>`, `data:idx:tag:<t>`, `data:idx:field:<f>:<json value>`. A query
  intersects them with the sorted set in one Lua call and pages newest first.

`DataManager` (`cluster.data.objects`) puts this, the quota and the backups
(`cluster.data.backup`) together.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import redis
from pydantic import BaseModel, ValidationError

from cluster.blobs import check_key, tenant_dir
from cluster.data.keyring import KeyRing
from cluster.data.models import (
    DataMetadata,
    DataObject,
    DataPage,
    DataQuery,
    DeleteResult,
    Record,
    Scalar,
    StorageResult,
    UpdateResult,
    arrow_ipc,
    table_from_ipc,
)
from cluster.errors import Conflict, InputInvalid, NotFound
from cluster.store import Store, unavailable_as_error

log = logging.getLogger(__name__)

#: Arrow tables whose IPC form is at most this size stay in Redis; larger ones go to Parquet.
INLINE_MAX_BYTES = 256 * 1024
_ENC = "$enc"
_BATCH = 500


class _Meta(Record):
    """The `meta` field of a data object's hash."""

    id: str
    version: int
    created_at: float
    updated_at: float
    metadata: dict[str, Any]
    format: str
    blob: str | None = None


def _metadata(raw: dict[str, Any]) -> DataMetadata:
    """Stored metadata, tolerating fields a newer version added."""
    return DataMetadata.model_validate(
        {k: v for k, v in raw.items() if k in DataMetadata.model_fields}
    )


def _canon(value: Scalar) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, None deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = _merge_patch(result.get(name), value)
    return result


def _cursor(text: str) -> tuple[float, str]:
    try:
        score, oid = json.loads(base64.urlsafe_b64decode(text.encode()))
        return float(score), str(oid)
    except (ValueError, TypeError, binascii.Error):
        raise InputInvalid("query", [f"cursor {text!r} is not one this API returned"]) from None


def _make_cursor(score: float, oid: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([score, oid]).encode()).decode()


# KEYS: created zset, scratch key, index sets...; ARGV: max, min, cursor score, cursor id, n.
# Newest first; ties in created_at are ordered by id descending, which the cursor resumes.
_PAGE_LUA = """
local src = KEYS[1]
if #KEYS > 2 then
  local args = {'ZINTERSTORE', KEYS[2], #KEYS - 1, KEYS[1]}
  for i = 3, #KEYS do args[#args + 1] = KEYS[i] end
  args[#args + 1] = 'WEIGHTS'
  args[#args + 1] = 1
  for i = 3, #KEYS do args[#args + 1] = 0 end
  redis.call(unpack(args))
  src = KEYS[2]
end
local n = tonumber(ARGV[5])
local cscore = tonumber(ARGV[3])
local out, offset = {}, 0
while #out < 2 * n do
  local got = redis.call('ZREVRANGEBYSCORE', src, ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', offset, n)
  if #got == 0 then break end
  offset = offset + #got / 2
  for i = 1, #got, 2 do
    if #out < 2 * n and (cscore == nil or tonumber(got[i + 1]) < cscore or got[i] < ARGV[4]) then
      out[#out + 1] = got[i]
      out[#out + 1] = got[i + 1]
    end
  end
end
if src ~= KEYS[1] then redis.call('DEL', src) end
return out
"""


class ObjectStore:
    """Data objects of one tenant: hashes, secondary indexes and Parquet blobs."""

    def __init__(self, store: Store, blob_root: str, keys: KeyRing, inline_max_bytes: int) -> None:
        self.store = store
        self.keys = keys
        self.inline_max_bytes = inline_max_bytes
        blobs = tenant_dir(blob_root, store.tenant, "data")
        self.fs, self.blob_dir = blobs.fs, blobs.path
        #: Where the layout before per-tenant roots kept them (read only, as a fallback).
        self.legacy_dir = f"{blobs.path.rsplit('/', 2)[0]}/data/{store.tenant}"
        self.created_key = self._key("idx", "created")
        self._page = store.redis.register_script(_PAGE_LUA)

    def _key(self, *parts: str) -> str:
        return self.store.key("data", *parts)

    def obj_key(self, oid: str) -> str:
        return self._key("obj", oid)

    def index_keys(self, m: DataMetadata) -> set[str]:
        keys = {self._key("idx", "kind", m.kind), self._key("idx", "name", m.name)}
        keys |= {self._key("idx", "tag", t) for t in m.tags}
        return keys | {self._key("idx", "field", n, _canon(v)) for n, v in m.fields.items()}

    def _query_keys(self, q: DataQuery) -> list[str]:
        keys = [self._key("idx", "kind", q.kind)] if q.kind else []
        keys += [self._key("idx", "name", q.name)] if q.name else []
        keys += [self._key("idx", "tag", t) for t in dict.fromkeys(q.tags)]
        return keys + [self._key("idx", "field", n, _canon(v)) for n, v in q.fields.items()]

    # -- encoding ------------------------------------------------------------------

    def encode(
        self, oid: str, version: int, data: Any, metadata: DataMetadata
    ) -> tuple[str, dict[str, str], str | None]:
        """(format, hash fields, blob path) for `data`; writes the Parquet file of a large table."""
        if isinstance(data, pa.Table):
            if metadata.sensitive:
                raise InputInvalid(
                    f"data object {oid!r}",
                    ["'sensitive' names fields of a dict, not of an Arrow table"],
                )
            ipc = arrow_ipc(data)
            if len(ipc) <= self.inline_max_bytes:
                return "arrow", {"data": base64.b64encode(ipc).decode()}, None
            rel = check_key(f"{oid}/v{version}.parquet")
            self.fs.create_dir(f"{self.blob_dir}/{oid}", recursive=True)
            pq.write_table(data, self.blob_path(rel), filesystem=self.fs)
            return "arrow", {}, rel
        return "json", {"data": self._encode_json(oid, data, metadata)}, None

    def _encode_json(self, oid: str, data: Any, metadata: DataMetadata) -> str:
        what = f"data object {oid!r}"
        if data is None or not isinstance(data, dict | list | str | int | float):
            raise InputInvalid(
                what,
                [
                    f"data must be a dict, list, str, number or pyarrow.Table, not {type(data).__name__}"
                ],
            )
        missing = [n for n in metadata.sensitive if not isinstance(data, dict) or n not in data]
        if missing:
            raise InputInvalid(
                what, [f"sensitive field {n!r} is not a key of the data" for n in missing]
            )
        try:
            if metadata.sensitive and isinstance(data, dict):
                secret = set(metadata.sensitive)
                data = {
                    k: {_ENC: self.keys.encrypt(v)} if k in secret else v for k, v in data.items()
                }
            return json.dumps(data, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InputInvalid(what, [f"data is not JSON: {exc}"]) from None

    def decode(self, raw: dict[str, str], include_data: bool) -> DataObject:
        meta = _Meta.model_validate_json(raw["meta"])
        metadata = _metadata(meta.metadata)
        data = self._data(meta, metadata, raw.get("data")) if include_data else None
        return DataObject(
            id=meta.id,
            version=meta.version,
            created_at=meta.created_at,
            updated_at=meta.updated_at,
            metadata=metadata,
            format="arrow" if meta.format == "arrow" else "json",
            data=data,
        )

    def _data(self, meta: _Meta, metadata: DataMetadata, payload: str | None) -> Any:
        if meta.blob:
            return self._read_blob(meta)
        if meta.format == "arrow":
            return table_from_ipc(base64.b64decode(payload or ""))
        value = json.loads(payload or "null")
        for name in metadata.sensitive:
            held = value.get(name) if isinstance(value, dict) else None
            if isinstance(held, dict) and _ENC in held:
                value[name] = self.keys.decrypt(
                    held[_ENC], f"field {name!r} of data object {meta.id!r}"
                )
        return value

    def blob_path(self, rel: str) -> str:
        """The path of a blob named relative to the data directory. Raises: InputInvalid."""
        return f"{self.blob_dir}/{check_key(rel)}"

    def _read_blob(self, meta: _Meta) -> pa.Table:
        rel = meta.blob or ""
        for path in (self.blob_path(rel), f"{self.legacy_dir}/{check_key(rel)}"):
            try:
                return pq.read_table(path, filesystem=self.fs)
            except FileNotFoundError:
                continue
        raise NotFound(
            f"data object {meta.id!r} version {meta.version}: its Parquet file "
            f"{self.blob_path(rel)} is missing"
        )

    def blob_in(self, fields: dict[bytes, bytes]) -> str | None:
        """The Parquet file a data object's hash (as backed up) points at, if any."""
        raw = fields.get(b"meta")
        return _Meta.model_validate_json(raw).blob if raw else None

    def _remove_blob(self, rel: str | None) -> None:
        if rel:
            try:
                self.fs.delete_file(self.blob_path(rel))
            except (OSError, InputInvalid) as exc:
                log.warning("could not remove data blob %s: %s", rel, exc)

    # -- operations ----------------------------------------------------------------

    @unavailable_as_error
    def create(self, data: Any, metadata: DataMetadata) -> StorageResult:
        now, oid = time.time(), uuid.uuid4().hex
        fmt, fields, blob = self.encode(oid, 1, data, metadata)
        meta = _Meta(
            id=oid,
            version=1,
            created_at=now,
            updated_at=now,
            metadata=metadata.model_dump(),
            format=fmt,
            blob=blob,
        )
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(self.obj_key(oid), mapping={"meta": meta.model_dump_json(), **fields})
        for key in self.index_keys(metadata):
            pipe.sadd(key, oid)
        pipe.zadd(self.created_key, {oid: now})
        try:
            pipe.execute()
        except BaseException:
            self._remove_blob(blob)
            raise
        return StorageResult(id=oid, version=1, created_at=now)

    @unavailable_as_error
    def get(self, oid: str) -> DataObject:
        raw = self.store.redis.hgetall(self.obj_key(oid))
        if "meta" not in raw:
            raise NotFound(f"data object {oid!r} does not exist")
        return self.decode(raw, include_data=True)

    @unavailable_as_error
    def retrieve(self, q: DataQuery) -> DataPage:
        low = "-inf" if q.created_since is None else repr(float(q.created_since))
        high = "+inf" if q.created_before is None else f"({float(q.created_before)!r}"
        cscore, cid = _cursor(q.cursor) if q.cursor else (None, "")
        if cscore is not None and (q.created_before is None or cscore < q.created_before):
            high = repr(cscore)
        keys = [self.created_key, self._key("scratch", uuid.uuid4().hex), *self._query_keys(q)]
        flat = self._page(
            keys=keys, args=[high, low, "" if cscore is None else repr(cscore), cid, q.limit + 1]
        )
        found = [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        page = found[: q.limit]
        pipe = self.store.redis.pipeline(transaction=False)
        for oid, _ in page:
            pipe.hgetall(self.obj_key(oid))
        # An id whose hash is gone was deleted between the two calls: skip it.
        items = [self.decode(raw, q.include_data) for raw in pipe.execute() if "meta" in raw]
        more = len(found) > q.limit
        return DataPage(
            items=items, next_cursor=_make_cursor(page[-1][1], page[-1][0]) if more else None
        )

    def _current(self, pipe: Any, oid: str, include_data: bool) -> tuple[_Meta, DataObject]:
        raw = pipe.hgetall(self.obj_key(oid))
        if "meta" not in raw:
            raise NotFound(f"data object {oid!r} does not exist")
        return _Meta.model_validate_json(raw["meta"]), self.decode(raw, include_data)

    def _conflict(self, oid: str, expected: int) -> Conflict:
        raw = self.store.redis.hget(self.obj_key(oid), "meta")
        if raw is None:
            raise NotFound(f"data object {oid!r} was deleted")
        actual = _Meta.model_validate_json(raw).version
        return Conflict(
            f"data object {oid!r} is at version {actual}, not {expected}: get it again and retry the update"
        )

    @unavailable_as_error
    def update(self, oid: str, partial: dict[str, Any], expected_version: int) -> UpdateResult:
        key = self.obj_key(oid)
        with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            old, current = self._current(pipe, oid, include_data=True)
            if current.version != expected_version:
                raise self._conflict(oid, expected_version)
            data, metadata = _apply(current, partial)
            version, now = current.version + 1, time.time()
            fmt, fields, blob = self.encode(oid, version, data, metadata)
            meta = old.model_copy(
                update={
                    "version": version,
                    "updated_at": now,
                    "metadata": metadata.model_dump(),
                    "format": fmt,
                    "blob": blob,
                }
            )
            before, after = self.index_keys(current.metadata), self.index_keys(metadata)
            pipe.multi()
            pipe.hset(key, mapping={"meta": meta.model_dump_json(), **fields})
            if "data" not in fields:
                pipe.hdel(key, "data")
            for index in before - after:
                pipe.srem(index, oid)
            for index in after - before:
                pipe.sadd(index, oid)
            try:
                pipe.execute()
            except BaseException as exc:
                self._remove_blob(blob)
                if isinstance(exc, redis.WatchError):
                    raise self._conflict(oid, expected_version) from None
                raise
        if old.blob != blob:
            self._remove_blob(old.blob)
        return UpdateResult(
            id=oid, version=version, previous_version=current.version, updated_at=now
        )

    @unavailable_as_error
    def delete(self, oid: str) -> DeleteResult:
        key = self.obj_key(oid)
        with self.store.redis.pipeline(transaction=True) as pipe:
            for _ in range(10):
                try:
                    pipe.watch(key)
                    _, current = self._current(pipe, oid, include_data=False)
                    pipe.multi()
                    pipe.delete(key)
                    for index in self.index_keys(current.metadata):
                        pipe.srem(index, oid)
                    pipe.zrem(self.created_key, oid)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
            else:
                raise Conflict(f"data object {oid!r} kept changing while being deleted; try again")
        return DeleteResult(
            id=oid, version=current.version, blobs_removed=self._remove_blobs_of(oid)
        )

    def _remove_blobs_of(self, oid: str) -> int:
        directory = self.blob_path(oid)
        files = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        if files:
            self.fs.delete_dir(directory)
        return len(files)


def _apply(current: DataObject, partial: dict[str, Any]) -> tuple[Any, DataMetadata]:
    """The data and metadata after merging `partial` ({"data": ..., "metadata": ...}) in."""
    what = f"update of data object {current.id!r}"
    unknown = sorted(set(partial) - {"data", "metadata"})
    if unknown:
        raise InputInvalid(
            what,
            [f"unknown key {k!r}: an update changes 'data' and/or 'metadata'" for k in unknown],
        )
    data = current.data
    if "data" in partial:
        if partial["data"] is None:
            raise InputInvalid(what, ["'data' must not be null"])
        data = _merge_patch(data, partial["data"])
    metadata = current.metadata
    if "metadata" in partial:
        patch = partial["metadata"]
        if isinstance(patch, BaseModel):
            patch = patch.model_dump(exclude_unset=True)
        if not isinstance(patch, dict):
            raise InputInvalid(
                what, ["'metadata' must be a mapping of the metadata fields to change"]
            )
        try:
            metadata = DataMetadata.model_validate(_merge_patch(metadata.model_dump(), patch))
        except ValidationError as exc:
            raise InputInvalid(
                what, [f"metadata.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            ) from None
    return data, metadata


__all__ = ["INLINE_MAX_BYTES", "ObjectStore"]
