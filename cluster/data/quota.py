"""The tenant's storage quotas on data objects: bytes kept and objects kept.

An object counts at what it really holds once written: its Redis hash (metadata, inline
payload) plus its Parquet files. A new object is measured after the write and counted in
one Lua call; if that passes a quota the object is deleted again before the error is
raised, so the refused write is absent and two writers can never both take the last
bytes. An update is checked before it is written, by the size of what it brings, and
counted at its real size after.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from cluster.errors import StorageQuotaExceeded
from cluster.quotas import Quotas, StorageQuota

if TYPE_CHECKING:
    from cluster.store import Store


def estimate(data: Any) -> int:
    """Bytes `data` will take at least (JSON text, or the table's buffers)."""
    if isinstance(data, pa.Table):
        return int(data.nbytes)
    try:
        return len(json.dumps(data, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return 0  # not JSON: the write refuses it on its own


class DataQuota:
    """Counts one tenant's data objects against `stored_bytes` and `stored_objects`."""

    def __init__(self, store: Store, objects: Any, quotas: Quotas | None) -> None:
        self.store = store
        self.objects = objects
        self.counts = StorageQuota(store, quotas or Quotas())

    def measure(self, oid: str) -> int:
        """Bytes object `oid` holds now: its hash and its Parquet files."""
        redis = self.store.redis
        key = self.objects.obj_key(oid)
        size = sum(int(redis.hstrlen(key, field)) for field in ("meta", "data"))
        selector = pafs.FileSelector(f"{self.objects.blob_dir}/{oid}", allow_not_found=True)
        files = self.objects.fs.get_file_info(selector)
        return size + sum(max(f.size or 0, 0) for f in files)

    def admit(self, data: Any, oid: str | None = None) -> None:
        """Refuse early what cannot fit, before anything is written (`oid`: an update).

        Raises: StorageQuotaExceeded.
        """
        quotas, used = self.counts.quotas, self.counts.usage()
        if oid is None and used["objects"] >= quotas.stored_objects:
            raise StorageQuotaExceeded(
                "stored_objects",
                quotas.stored_objects,
                f"tenant {self.store.tenant!r} keeps {used['objects']} data objects; delete some",
            )
        grow = estimate(data)  # an update's merge patch adds at most about its own size
        if grow > 0 and used["bytes"] + grow > quotas.stored_bytes:
            raise StorageQuotaExceeded(
                "stored_bytes",
                quotas.stored_bytes,
                f"tenant {self.store.tenant!r} keeps {used['bytes']} bytes and this write "
                f"adds about {grow}; delete data objects it no longer needs",
            )

    def created(self, oid: str, delete: Any) -> None:
        """Count the new object `oid`; past a quota, `delete(oid)` it and raise.

        Raises: StorageQuotaExceeded.
        """
        try:
            self.counts.reserve(oid, self.measure(oid))
        except StorageQuotaExceeded:
            delete(oid)
            raise

    def updated(self, oid: str) -> None:
        """Count `oid` at its new size (checked before the write, so never refused)."""
        self.counts.reserve(oid, self.measure(oid), force=True)

    def deleted(self, oid: str) -> None:
        self.counts.restore(oid, None)


__all__ = ["DataQuota", "estimate"]
