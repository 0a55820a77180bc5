"""Contracts of the data layer: data objects, queries and their pages, backups and restores.

Inputs (`DataMetadata`, `DataQuery`, `BackupCriteria`) refuse unknown fields; what the
store and the backup manifests keep tolerates them so a rolling upgrade reads old and new.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

import pyarrow as pa
from pydantic import (
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from cluster.contracts import Contract, Record

#: A queryable metadata value. bool first so `True` never becomes 1.
Scalar = bool | int | float | str

FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
TAG = r"^[A-Za-z0-9][A-Za-z0-9_.:/=+-]{0,127}$"
KIND = r"^[a-z][a-z0-9_.-]{0,63}$"
BACKUP_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: The JSON form of an Arrow table inside a `DataObject` (base64 of the Arrow IPC stream).
#: Read back only when the object's own `format` (set by the store, outside `data`) is
#: "arrow": JSON data that happens to be `{"$arrow_ipc": ...}` stays that dict. It carries
#: bytes, never a path: decoding it reads no file.
ARROW_IPC = "$arrow_ipc"


class DataMetadata(Contract):
    """What a data object is and how it is found: name, kind, tags and queryable fields."""

    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(default="object", pattern=KIND)
    tags: list[str] = []
    #: Equality-queryable values; 1 and 1.0 match each other, "1" and 1 do not.
    fields: dict[str, Scalar] = {}
    #: Top-level keys of a dict `data` that are encrypted at rest.
    sensitive: list[str] = []

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        bad = [t for t in tags if not _matches(TAG, t)]
        if bad:
            raise ValueError(f"tags {bad!r} must match {TAG}")
        return list(dict.fromkeys(tags))

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: dict[str, Scalar]) -> dict[str, Scalar]:
        bad = [n for n in fields if not _matches(FIELD_NAME, n)]
        if bad:
            raise ValueError(f"field names {bad!r} must match {FIELD_NAME}")
        return fields

    @field_validator("sensitive")
    @classmethod
    def _sensitive(cls, names: list[str]) -> list[str]:
        if any(not n for n in names):
            raise ValueError("sensitive field names must not be empty")
        return list(dict.fromkeys(names))


class DataObject(Record):
    """One stored object at one version; `data` is JSON or a `pyarrow.Table`."""

    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

    id: str
    version: int = Field(ge=1)
    created_at: float
    updated_at: float
    metadata: DataMetadata
    format: Literal["json", "arrow"]
    #: None when the query asked for metadata only.
    data: Any = None

    @field_serializer("data", when_used="json")
    def _data_json(self, data: Any) -> Any:
        if isinstance(data, pa.Table):
            return {ARROW_IPC: base64.b64encode(arrow_ipc(data)).decode()}
        return data

    @model_validator(mode="before")
    @classmethod
    def _data_arrow(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("format") == "arrow":
            data = values.get("data")
            if isinstance(data, dict) and set(data) == {ARROW_IPC}:
                values = {**values, "data": table_from_ipc(base64.b64decode(data[ARROW_IPC]))}
        return values


class DataQuery(Contract):
    """Find objects: every given constraint must hold; newest first, `limit` per page."""

    name: str | None = None
    kind: str | None = Field(default=None, pattern=KIND)
    #: Objects carrying all of these tags.
    tags: list[str] = []
    fields: dict[str, Scalar] = {}
    #: Epoch seconds, inclusive.
    created_since: float | None = None
    #: Epoch seconds, exclusive.
    created_before: float | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    #: `next_cursor` of the previous page.
    cursor: str | None = None
    include_data: bool = True


class DataPage(Record):
    """One page of a query; pass `next_cursor` back for the next, None means the last."""

    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

    items: list[DataObject]
    next_cursor: str | None = None


class StorageResult(Record):
    id: str
    version: int = 1
    created_at: float


class UpdateResult(Record):
    id: str
    version: int
    previous_version: int
    updated_at: float


class DeleteResult(Record):
    id: str
    #: The version that was deleted.
    version: int
    blobs_removed: int = 0


class BackupCriteria(Contract):
    """What to back up: key prefixes under the tenant (e.g. "data:", "exec:"); empty is all."""

    prefixes: list[str] = []
    label: str | None = Field(default=None, max_length=200)
    #: Copy the Parquet files of large Arrow data objects into the backup too.
    include_blobs: bool = True


class BackupCounts(Record):
    keys: int = 0
    #: Keys per Redis type: string, hash, list, set, zset, stream.
    by_type: dict[str, int] = {}
    #: Keys per first key segment after the tenant: agents, wf, exec, data, ...
    by_prefix: dict[str, int] = {}
    #: Rows per Parquet file of the backup.
    rows: dict[str, int] = {}
    ttl_keys: int = 0
    blobs: int = 0


class BackupInfo(Record):
    backup_id: str
    tenant: str
    label: str | None = None
    created_at: float
    #: Where the backup's directory is (a path or a URI).
    uri: str
    prefixes: list[str] = []
    counts: BackupCounts
    #: "sha256:<hex>" over a canonical dump of every key's content.
    checksum: str


class BlobEntry(Record):
    """A Parquet file of a data object, relative to the tenant's data directory."""

    path: str
    bytes: int
    sha256: str


class BackupManifest(BackupInfo):
    """`manifest.json` of a backup, written last: a backup without one is incomplete."""

    format: int = 1
    blobs: list[BlobEntry] = []


class BackupResult(Record):
    info: BackupInfo
    duration_s: float


class RestoreResult(Record):
    backup_id: str
    tenant: str
    keys: int
    by_type: dict[str, int] = {}
    blobs: int = 0
    #: Security records (API keys, users, audit, idempotency) an older backup held: checked,
    #: never written, so a restore cannot bring back a revoked key or shorten the audit.
    skipped_keys: int = 0
    #: The checksum of the restored content: the manifest's, unless keys were skipped.
    checksum: str
    duration_s: float


def arrow_ipc(table: pa.Table) -> bytes:
    """The table as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def table_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


__all__ = [
    "ARROW_IPC",
    "BackupCounts",
    "BackupCriteria",
    "BackupInfo",
    "BackupManifest",
    "BackupResult",
    "BlobEntry",
    "DataMetadata",
    "DataObject",
    "DataPage",
    "DataQuery",
    "DeleteResult",
    "RestoreResult",
    "Scalar",
    "StorageResult",
    "UpdateResult",
    "arrow_ipc",
    "table_from_ipc",
]
