"""`DataManager`: a tenant's data objects, their quota, and backups of its whole state.

How objects are kept (hashes, indexes, Parquet blobs) is `cluster.data.objectstore`; the
encryption key of sensitive fields is `cluster.data.keyring`; backups and restores are
`cluster.data.backup`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.blobs import tenant_dir
from cluster.data.backup import _Snapshots
from cluster.data.keyring import KeyRing
from cluster.data.models import (
    BackupCriteria,
    BackupInfo,
    BackupResult,
    DataMetadata,
    DataObject,
    DataPage,
    DataQuery,
    DeleteResult,
    RestoreResult,
    StorageResult,
    UpdateResult,
)
from cluster.data.objectstore import INLINE_MAX_BYTES, ObjectStore
from cluster.data.quota import DataQuota
from cluster.quotas import Quotas
from cluster.settings import Settings
from cluster.store import Store


class DataManager:
    """Data objects of one tenant, and backups of the tenant's whole state.

    `data` is JSON (dict, list, str, number) or a `pyarrow.Table`; `metadata.sensitive`
    names fields of a dict that are encrypted at rest with a key kept outside Redis.
    """

    def __init__(
        self,
        store: Store,
        blob_root: str,
        key_file: Path | None = None,
        *,
        backup_root: str | None = None,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        quotas: Quotas | None = None,
    ) -> None:
        self.keys = KeyRing(key_file)
        self._objects = ObjectStore(store, blob_root, self.keys, inline_max_bytes)
        self._quota = DataQuota(store, self._objects, quotas)  # stored_bytes, stored_objects
        root = backup_root or tenant_dir(blob_root, store.tenant, "backups").uri
        self._snapshots = _Snapshots(store, self._objects, root)

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> DataManager:
        """Blobs and backups under `<settings.blobs>/<tenant>/`; the key in `$DAFNCK_DATA_KEY`
        or `<state_dir>/data.key`."""
        quotas = settings.quotas.for_tenant(store.tenant)
        return cls(store, settings.blobs, settings.state_dir / "data.key", quotas=quotas)

    def store(self, data: Any, metadata: DataMetadata) -> StorageResult:
        """Keep a new object at version 1.

        Raises: InputInvalid (data not JSON, or sensitive fields it lacks), ConfigError (no
        usable key for sensitive fields), StoreUnavailable.
        """
        self._quota.admit(data)
        result = self._objects.create(data, metadata)
        self._quota.created(result.id, self._objects.delete)
        return result

    def get(self, object_id: str) -> DataObject:
        """The latest version, sensitive fields decrypted.

        Raises: NotFound, ConfigError (the key cannot decrypt it), StoreUnavailable.
        """
        return self._objects.get(object_id)

    def retrieve(self, query: DataQuery) -> DataPage:
        """Objects matching every constraint of the query, newest first, one page.

        Raises: InputInvalid (a cursor this API did not return), ConfigError, StoreUnavailable.
        """
        return self._objects.retrieve(query)

    def update(
        self, object_id: str, partial: dict[str, Any], expected_version: int
    ) -> UpdateResult:
        """Merge `{"data": ..., "metadata": ...}` in (JSON merge patch) if the version matches.

        Raises: NotFound, Conflict (another version is current), InputInvalid, ConfigError,
        StoreUnavailable.
        """
        self._quota.admit(partial.get("data"), object_id)
        result = self._objects.update(object_id, partial, expected_version)
        self._quota.updated(object_id)
        return result

    def delete(self, object_id: str) -> DeleteResult:
        """Remove the object, its index entries and its Parquet files.

        Raises: NotFound, StoreUnavailable.
        """
        result = self._objects.delete(object_id)
        self._quota.deleted(object_id)
        return result

    def backup(self, criteria: BackupCriteria | None = None) -> BackupResult:
        """Write the tenant's keys (all, or those under `criteria.prefixes`) as a new backup.

        Raises: Conflict (a key of a type a backup cannot hold), StoreUnavailable, OSError
        (the backup location cannot be written).
        """
        return self._snapshots.backup(criteria or BackupCriteria())

    def list_backups(self) -> list[BackupInfo]:
        """Complete backups under the backup root, newest first.

        Raises: OSError (the backup location cannot be read).
        """
        return self._snapshots.list_backups()

    def restore(self, backup_id: str, *, into_empty: bool = True) -> RestoreResult:
        """Write a backup's keys back under this tenant and check them against its checksum.

        Raises: NotFound (no such backup), InputInvalid (a malformed id), Conflict (the tenant
        has keys and into_empty is set; the backup is damaged; the restored content differs),
        StoreUnavailable.
        """
        return self._snapshots.restore(backup_id, into_empty)


__all__ = ["DataManager"]
