"""Backups and restores never weaken auth, and blobs stay under the tenant's own root:
DataManager, ApiKeys and AuditLog against the real session Valkey."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

from cluster.auth.audit import AuditLog
from cluster.auth.keys import ApiKeys
from cluster.auth.models import Principal, Role
from cluster.data import keys as backup_keys
from cluster.data.models import (
    ARROW_IPC,
    BackupCounts,
    BackupManifest,
    DataMetadata,
    DataObject,
    arrow_ipc,
)
from cluster.data.objects import DataManager
from cluster.data.restore import operator_principal, restore_audited
from cluster.errors import InputInvalid, NotFound, Unauthorized
from cluster.store import Store

TENANT_KEYS = ("auth:apikeys", "auth:users", "idempotency:abc", "audit")


@pytest.fixture
def acme(store: Store) -> Store:
    return store.for_tenant("acme")


@pytest.fixture
def dm(acme: Store, tmp_path: Path) -> DataManager:
    return DataManager(acme, str(tmp_path / "blobs"), tmp_path / "data.key", inline_max_bytes=0)


def admin(tenant: str = "acme") -> Principal:
    return Principal(subject="ada", tenant=tenant, role=Role.ADMIN, kind="user")


def security_records(store: Store) -> None:
    """What a live tenant holds besides its state: users, idempotency answers, an audit."""
    store.redis.hset(store.key("auth", "users"), "ada", json.dumps({"password_hash": "$argon2"}))
    store.redis.set(store.key("idempotency", "abc"), "answer")
    store.redis.xadd(store.key("audit"), {"action": "keys:manage"})


def legacy_backup(dm: DataManager, backup_id: str) -> str:
    """A backup as the code before this rule wrote it: every key, credentials included."""
    snaps = dm._snapshots
    client = snaps._client()
    keys = list(client.scan_iter(match=snaps.prefix + b"*"))
    dumps = backup_keys.read_keys(client, keys, snaps.prefix)
    client.close()
    directory = f"{snaps.root}/{backup_id}"
    snaps.fs.create_dir(directory, recursive=True)
    sinks = backup_keys.Sinks(snaps.fs, directory)
    for d in dumps:
        sinks.add(d)
    manifest = BackupManifest(
        backup_id=backup_id, tenant=dm._objects.store.tenant, created_at=time.time(),
        uri=directory, counts=BackupCounts(keys=len(dumps), rows=sinks.close()),
        checksum=backup_keys.checksum_of({d.key: d.digest() for d in dumps}),
    )  # fmt: skip
    with snaps.fs.open_output_stream(f"{directory}/manifest.json") as out:
        out.write(manifest.model_dump_json().encode())
    return backup_id


def test_a_backup_holds_no_credentials_audit_or_idempotency(
    acme: Store, dm: DataManager, tmp_path: Path
) -> None:
    keys = ApiKeys(acme)
    _, secret = keys.create_api_key("acme", Role.ADMIN, "ops")
    security_records(acme)
    AuditLog(acme).record(admin(), "acme", "data:write", "x")
    dm.store({"n": 1}, DataMetadata(name="doc"))
    info = dm.backup().info
    assert set(info.counts.by_prefix) == {"data"}
    digest = keys._record(secret.split("_")[1])
    assert digest is not None
    files = b"".join(p.read_bytes() for p in Path(info.uri).rglob("*") if p.is_file())
    assert digest.secret_sha256.encode() not in files and b"argon2" not in files


def test_restore_of_an_old_backup_never_brings_back_a_revoked_key(
    acme: Store, dm: DataManager
) -> None:
    keys, audit = ApiKeys(acme), AuditLog(acme)
    key_id, secret = keys.create_api_key("acme", Role.VIEWER, "laptop")
    security_records(acme)
    made = dm.store({"n": 1}, DataMetadata(name="doc"))
    old = legacy_backup(dm, "20260101T000000Z-legacy")
    keys.revoke_api_key("acme", key_id)
    audit.record(admin(), "acme", "keys:manage", f"key:{key_id}")
    audit_before = audit.list("acme", limit=1000).entries
    dm.update(made.id, {"data": {"n": 2}}, expected_version=1)

    result = restore_audited(dm, audit, admin(), old, into_empty=False)

    assert dm.get(made.id).data == {"n": 1}  # the state is back
    assert result.skipped_keys >= len(TENANT_KEYS)
    with pytest.raises(Unauthorized, match="revoked"):
        keys.authenticate_api_key(secret)
    after = audit.list("acme", limit=1000).entries
    assert [e.id for e in after[: len(audit_before)]] == [e.id for e in audit_before]
    assert [(e.action, e.outcome) for e in after[len(audit_before) :]] == [
        ("backups:restore", "started"),
        ("backups:restore", "ok"),
    ]


def test_into_empty_ignores_security_records(acme: Store, dm: DataManager, tmp_path: Path) -> None:
    made = dm.store({"n": 1}, DataMetadata(name="doc"))
    info = dm.backup().info
    fresh = acme.for_tenant("fresh")
    ApiKeys(fresh).create_api_key("fresh", Role.ADMIN, "ops")
    security_records(fresh)
    target = DataManager(fresh, str(tmp_path / "blobs"), tmp_path / "data.key",
                         backup_root=str(Path(info.uri).parent))  # fmt: skip
    target.restore(info.backup_id)  # only credentials and the audit are there: it is empty
    assert target.get(made.id).data == {"n": 1}


def test_a_failed_restore_is_audited_after_its_start(acme: Store, dm: DataManager) -> None:
    audit = AuditLog(acme)
    with pytest.raises(NotFound):
        restore_audited(dm, audit, operator_principal("acme"), "20990101T000000Z-none")
    entries = audit.list("acme").entries
    assert [(e.outcome, e.subject.startswith("cli:")) for e in entries] == [
        ("started", True),
        ("failed", True),
    ]
    assert "does not exist" in entries[1].detail


def test_data_and_backups_live_under_the_tenants_root(acme: Store, tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    for tenant in ("ta", "tb"):
        dm = DataManager(acme.for_tenant(tenant), str(root), tmp_path / "k", inline_max_bytes=0)
        dm.store(pa.table({"n": [1]}), DataMetadata(name="t"))
        dm.backup()
    tops = {p.relative_to(root).parts[:2] for p in root.rglob("*") if p.is_file()}
    assert tops == {("ta", "data"), ("ta", "backups"), ("tb", "data"), ("tb", "backups")}
    other = DataManager(acme.for_tenant("tb"), str(root), tmp_path / "k")
    ta_backup = DataManager(acme.for_tenant("ta"), str(root), tmp_path / "k").list_backups()[0]
    with pytest.raises(NotFound):
        other.restore(ta_backup.backup_id)


def test_a_blob_name_climbing_out_is_refused(acme: Store, dm: DataManager, tmp_path: Path) -> None:
    made = dm.store(pa.table({"n": [1]}), DataMetadata(name="t"))
    key = acme.key("data", "obj", made.id)
    meta = json.loads(acme.redis.hget(key, "meta"))
    for forged in ("../../other/data/x/v1.parquet", "/etc/passwd"):
        acme.redis.hset(key, "meta", json.dumps(meta | {"blob": forged}))
        with pytest.raises(InputInvalid, match="blob key"):
            dm.get(made.id)


def test_a_manifest_blob_climbing_out_is_refused_before_any_write(
    acme: Store, dm: DataManager, tmp_path: Path
) -> None:
    dm.store(pa.table({"n": [1]}), DataMetadata(name="t"))
    info = dm.backup().info
    manifest_path = Path(info.uri) / "manifest.json"
    manifest = BackupManifest.model_validate_json(manifest_path.read_text())
    blob = manifest.blobs[0].model_copy(update={"path": "../../../escaped.parquet"})
    manifest_path.write_text(manifest.model_copy(update={"blobs": [blob]}).model_dump_json())
    acme.redis.flushdb()
    with pytest.raises(InputInvalid, match="blob key"):
        dm.restore(info.backup_id)
    assert acme.redis.dbsize() == 0 and not list(tmp_path.rglob("escaped.parquet"))


def test_a_legacy_data_blob_is_still_read(acme: Store, dm: DataManager, tmp_path: Path) -> None:
    """Files written before per-tenant roots, under `<blobs>/data/<tenant>/`, are read back."""
    made = dm.store(pa.table({"n": [5]}), DataMetadata(name="t"))
    new = tmp_path / "blobs" / "acme" / "data" / made.id
    legacy = tmp_path / "blobs" / "data" / "acme" / made.id
    legacy.parent.mkdir(parents=True)
    new.rename(legacy)
    assert dm.get(made.id).data.column("n").to_pylist() == [5]


def test_an_arrow_ipc_marker_in_json_data_stays_a_dict(dm: DataManager) -> None:
    marker = {ARROW_IPC: base64.b64encode(arrow_ipc(pa.table({"n": [1]}))).decode()}
    made = dm.store(marker, DataMetadata(name="looks-like-arrow"))
    got = dm.get(made.id)
    assert got.format == "json" and got.data == marker
    assert DataObject.model_validate_json(got.model_dump_json()).data == marker
