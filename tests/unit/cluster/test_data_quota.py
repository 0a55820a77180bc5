"""Storage quotas on data objects against the real session Valkey: a write past the bytes
or objects quota is refused with 507 naming the limit, and is absent afterwards; deleting
gives the room back."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from cluster.data.models import DataMetadata, DataQuery
from cluster.data.objects import DataManager
from cluster.errors import StorageQuotaExceeded
from cluster.quotas import Quotas
from cluster.settings import load_settings
from cluster.store import Store


def manager(store: Store, tmp_path: Path, **quotas: int) -> DataManager:
    return DataManager(
        store,
        str(tmp_path / "blobs"),
        tmp_path / "data.key",
        inline_max_bytes=1024,
        quotas=Quotas(**quotas),
    )


def names(dm: DataManager) -> list[str]:
    return sorted(o.metadata.name for o in dm.retrieve(DataQuery(limit=100)).items)


def test_the_object_quota_refuses_one_more_and_delete_frees_it(
    store: Store, tmp_path: Path
) -> None:
    dm = manager(store, tmp_path, stored_objects=2)
    first = dm.store({"n": 1}, DataMetadata(name="a"))
    dm.store({"n": 2}, DataMetadata(name="b"))
    with pytest.raises(StorageQuotaExceeded) as refused:
        dm.store({"n": 3}, DataMetadata(name="c"))
    assert refused.value.limit == "stored_objects" and refused.value.status_code == 507
    assert names(dm) == ["a", "b"]  # the refused write is absent
    dm.delete(first.id)
    dm.store({"n": 3}, DataMetadata(name="c"))
    assert names(dm) == ["b", "c"]


def test_the_byte_quota_counts_inline_data_and_parquet_files(
    store: Store, tmp_path: Path
) -> None:
    dm = manager(store, tmp_path, stored_bytes=20_000)
    dm.store({"text": "x" * 5_000}, DataMetadata(name="small"))
    with pytest.raises(StorageQuotaExceeded) as refused:
        dm.store({"text": "y" * 30_000}, DataMetadata(name="big"))
    assert refused.value.limit == "stored_bytes" and "'stored_bytes' (20000)" in str(refused.value)
    table = pa.table({"n": list(range(5_000))})  # ~40 kB of buffers: a Parquet file
    with pytest.raises(StorageQuotaExceeded):
        dm.store(table, DataMetadata(name="table"))
    assert names(dm) == ["small"]
    assert not list((tmp_path / "blobs").rglob("*.parquet"))  # nor its file


def test_a_write_measured_past_the_quota_is_deleted_again(store: Store, tmp_path: Path) -> None:
    """The estimate passes (compressible text), the object as stored does not: it goes."""
    dm = manager(store, tmp_path, stored_bytes=600)
    with pytest.raises(StorageQuotaExceeded):
        dm.store({"t": "z" * 500}, DataMetadata(name="edge", tags=["a", "b", "c"]))
    assert names(dm) == []


def test_quotas_per_tenant_override_the_defaults() -> None:
    settings = load_settings(quotas={"stored_objects": 5, "tenants": {"big": {"stored_objects": 50}}})
    assert settings.quotas.for_tenant("big").stored_objects == 50
    assert settings.quotas.for_tenant("other").stored_objects == 5
