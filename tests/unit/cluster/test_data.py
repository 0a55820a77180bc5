"""DataManager against a real Valkey (and redis-server where present): objects, queries,
versions, encryption at rest, and backups that restore to the same content."""

from __future__ import annotations

import json
import os
import pickle
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from cryptography.fernet import Fernet
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster.data.keyring import KEY_ENV
from cluster.data.models import (
    BackupCriteria,
    BackupManifest,
    DataMetadata,
    DataObject,
    DataPage,
    DataQuery,
    StorageResult,
)
from cluster.data.objects import DataManager
from cluster.errors import ConfigError, Conflict, InputInvalid, NotFound
from cluster.settings import load_settings
from cluster.store import Store, connect_store


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def any_store(any_store_url: str, tmp_path: Path) -> Iterator[Store]:
    """A fresh tenant on Valkey and on redis-server; the database is flushed around the test."""
    settings = load_settings(tenant=f"t{uuid.uuid4().hex[:8]}", state_dir=str(tmp_path))
    store = connect_store(settings, url=any_store_url)
    store.redis.flushdb()
    yield store
    store.redis.flushdb()
    store.close()


def manager_for(store: Store, tmp_path: Path, **kwargs: Any) -> DataManager:
    return DataManager(store, str(tmp_path / "blobs"), tmp_path / "state" / "data.key", **kwargs)


@pytest.fixture
def dm(store: Store, tmp_path: Path) -> DataManager:
    return manager_for(store, tmp_path)


def meta(name: str = "doc", **kwargs: Any) -> DataMetadata:
    return DataMetadata(name=name, **kwargs)


def ids(page: DataPage) -> list[str]:
    return [item.id for item in page.items]


# -- objects ---------------------------------------------------------------------------


def test_store_then_get_gives_the_object_back(any_store: Store, tmp_path: Path) -> None:
    dm = manager_for(any_store, tmp_path)
    data = {"title": "Q3", "rows": [1, 2, 3], "nested": {"ok": True}}
    result = dm.store(data, meta("report", kind="report", tags=["q3"], fields={"year": 2024}))
    assert result.version == 1
    got = dm.get(result.id)
    assert got.data == data
    assert (got.version, got.format, got.created_at) == (1, "json", result.created_at)
    assert got.metadata.fields == {"year": 2024}
    assert all(k.startswith(f"dafnck:{any_store.tenant}:data:") for k in any_store.redis.keys("*"))


def test_get_of_an_unknown_id_is_not_found(dm: DataManager) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        dm.get("nope")


def test_data_that_is_not_json_is_refused(dm: DataManager) -> None:
    with pytest.raises(InputInvalid, match="not JSON"):
        dm.store({"when": object()}, meta())
    with pytest.raises(InputInvalid, match="'pin' is not a key"):
        dm.store({"name": "x"}, meta(sensitive=["pin"]))
    with pytest.raises(InputInvalid, match="must be a dict"):
        dm.store(None, meta())


def test_retrieve_by_field_kind_and_name(dm: DataManager) -> None:
    a = dm.store({"n": 1}, meta("a", kind="report", fields={"year": 2024, "final": True}))
    b = dm.store({"n": 2}, meta("b", kind="report", fields={"year": 2023, "final": True}))
    c = dm.store({"n": 3}, meta("c", kind="note", fields={"year": 2024.0, "final": False}))
    assert ids(dm.retrieve(DataQuery(fields={"year": 2024}))) == [c.id, a.id]
    assert ids(dm.retrieve(DataQuery(fields={"year": 2024, "final": True}))) == [a.id]
    assert ids(dm.retrieve(DataQuery(fields={"year": "2024"}))) == []
    assert ids(dm.retrieve(DataQuery(kind="report"))) == [b.id, a.id]
    assert ids(dm.retrieve(DataQuery(name="c"))) == [c.id]
    assert dm.retrieve(DataQuery(name="a")).items[0].data == {"n": 1}


def test_retrieve_by_tags_needs_all_of_them(dm: DataManager) -> None:
    a = dm.store([1], meta(tags=["red", "big"]))
    b = dm.store([2], meta(tags=["red"]))
    dm.store([3], meta(tags=["big"]))
    assert ids(dm.retrieve(DataQuery(tags=["red"]))) == [b.id, a.id]
    assert ids(dm.retrieve(DataQuery(tags=["red", "big"]))) == [a.id]
    assert ids(dm.retrieve(DataQuery(tags=["red", "missing"]))) == []


def test_retrieve_by_created_time_range(dm: DataManager) -> None:
    made = [dm.store({"i": i}, meta()) for i in range(4)]
    since, before = made[1].created_at, made[3].created_at
    page = dm.retrieve(DataQuery(created_since=since, created_before=before))
    assert ids(page) == [made[2].id, made[1].id]
    assert ids(dm.retrieve(DataQuery(created_since=made[3].created_at))) == [made[3].id]


def test_paging_visits_every_object_once_newest_first(dm: DataManager) -> None:
    made = [dm.store({"i": i}, meta(tags=["batch"])) for i in range(23)]
    for query in (DataQuery(limit=5), DataQuery(limit=5, tags=["batch"])):
        seen: list[str] = []
        cursor = None
        while True:
            page = dm.retrieve(query.model_copy(update={"cursor": cursor}))
            seen += ids(page)
            assert len(page.items) <= 5
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [r.id for r in reversed(made)]


def test_paging_survives_objects_created_at_the_same_instant(dm: DataManager, store: Store) -> None:
    made = {dm.store({"i": i}, meta()).id for i in range(12)}
    # As if all were created within one clock tick.
    store.redis.zadd(store.key("data", "idx", "created"), dict.fromkeys(made, 1000.0))
    seen: list[str] = []
    page = dm.retrieve(DataQuery(limit=5))
    seen += ids(page)
    while page.next_cursor:
        page = dm.retrieve(DataQuery(limit=5, cursor=page.next_cursor))
        seen += ids(page)
    assert sorted(seen) == sorted(made) and len(seen) == 12
    assert seen == sorted(made, reverse=True)


def test_a_forged_cursor_is_refused(dm: DataManager) -> None:
    with pytest.raises(InputInvalid, match="cursor"):
        dm.retrieve(DataQuery(cursor="not-a-cursor"))


def test_update_with_the_current_version_merges_and_bumps_it(
    any_store: Store, tmp_path: Path
) -> None:
    dm = manager_for(any_store, tmp_path)
    made = dm.store({"a": 1, "b": {"c": 2, "d": 3}}, meta(tags=["old"], fields={"stage": "draft"}))
    result = dm.update(
        made.id,
        {
            "data": {"b": {"d": None, "e": 5}},
            "metadata": {"tags": ["new"], "fields": {"stage": "final"}},
        },
        expected_version=1,
    )
    assert (result.version, result.previous_version) == (2, 1)
    got = dm.get(made.id)
    assert got.data == {"a": 1, "b": {"c": 2, "e": 5}}
    assert (got.version, got.metadata.tags, got.created_at) == (2, ["new"], made.created_at)
    assert ids(dm.retrieve(DataQuery(tags=["old"]))) == []
    assert ids(dm.retrieve(DataQuery(tags=["new"], fields={"stage": "final"}))) == [made.id]
    assert ids(dm.retrieve(DataQuery(fields={"stage": "draft"}))) == []


def test_update_with_a_stale_version_is_a_conflict_naming_both(
    any_store: Store, tmp_path: Path
) -> None:
    dm = manager_for(any_store, tmp_path)
    made = dm.store({"a": 1}, meta())
    dm.update(made.id, {"data": {"a": 2}}, expected_version=1)
    with pytest.raises(Conflict, match=r"version 2, not 1"):
        dm.update(made.id, {"data": {"a": 3}}, expected_version=1)
    assert dm.get(made.id).data == {"a": 2}


def test_concurrent_updates_lose_nothing(store: Store, tmp_path: Path) -> None:
    made = manager_for(store, tmp_path).store({"n": 0}, meta())

    def bump(times: int) -> int:
        dm, conflicts = manager_for(store, tmp_path), 0
        for _ in range(times):
            while True:
                current = dm.get(made.id)
                try:
                    dm.update(made.id, {"data": {"n": current.data["n"] + 1}}, current.version)
                    break
                except Conflict:
                    conflicts += 1
        return conflicts

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(bump, [25] * 4))
    final = manager_for(store, tmp_path).get(made.id)
    assert (final.data, final.version) == ({"n": 100}, 101)


def test_update_refuses_unknown_keys_and_bad_metadata(dm: DataManager) -> None:
    made = dm.store({"a": 1}, meta())
    with pytest.raises(InputInvalid, match="unknown key 'title'"):
        dm.update(made.id, {"title": "x"}, expected_version=1)
    with pytest.raises(InputInvalid, match=r"metadata\.kind"):
        dm.update(made.id, {"metadata": {"kind": "Not A Kind"}}, expected_version=1)
    with pytest.raises(NotFound):
        dm.update("gone", {"data": {}}, expected_version=1)
    assert dm.get(made.id).version == 1


def test_delete_removes_the_object_and_every_index_entry(dm: DataManager, store: Store) -> None:
    keep = dm.store({"k": 1}, meta("keep", tags=["t"], fields={"f": 1}))
    gone = dm.store({"g": 1}, meta("gone", kind="other", tags=["t", "u"], fields={"f": 1, "h": 2}))
    before = set(store.redis.keys("*"))
    result = dm.delete(gone.id)
    assert result.version == 1
    with pytest.raises(NotFound):
        dm.get(gone.id)
    with pytest.raises(NotFound):
        dm.delete(gone.id)
    after = set(store.redis.keys("*"))
    assert not any(store.redis.sismember(k, gone.id) for k in after if store.redis.type(k) == "set")
    assert store.redis.zscore(store.key("data", "idx", "created"), gone.id) is None
    # Indexes only the deleted object used are gone with it.
    assert before - after == {
        store.key("data", "obj", gone.id),
        store.key("data", "idx", "kind", "other"),
        store.key("data", "idx", "name", "gone"),
        store.key("data", "idx", "tag", "u"),
        store.key("data", "idx", "field", "h", "2"),
    }
    assert ids(dm.retrieve(DataQuery(tags=["t"]))) == [keep.id]


# -- Arrow -----------------------------------------------------------------------------


def table(rows: int) -> pa.Table:
    return pa.table(
        {"id": pa.array(range(rows), pa.int64()), "name": [f"row-{i}" for i in range(rows)]},
        metadata={"source": "test"},
    )


def test_a_small_arrow_table_round_trips_inside_redis(dm: DataManager, tmp_path: Path) -> None:
    t = table(10)
    made = dm.store(t, meta("small", kind="dataset"))
    got = dm.get(made.id)
    assert got.format == "arrow" and got.data.equals(t, check_metadata=True)
    assert not list(tmp_path.rglob("*.parquet"))


def test_a_large_arrow_table_is_a_parquet_file(store: Store, tmp_path: Path) -> None:
    dm = manager_for(store, tmp_path, inline_max_bytes=1024)
    t = table(5_000)
    made = dm.store(t, meta("large", kind="dataset"))
    path = tmp_path / "blobs" / store.tenant / "data" / made.id / "v1.parquet"
    assert pq.read_table(path).equals(t)
    assert dm.get(made.id).data.equals(t)
    page = dm.retrieve(DataQuery(kind="dataset"))
    assert page.items[0].data.equals(t)
    bigger = table(6_000)
    dm.update(made.id, {"data": bigger}, expected_version=1)
    assert dm.get(made.id).data.equals(bigger)
    assert not path.exists() and path.with_name("v2.parquet").exists()
    assert dm.delete(made.id).blobs_removed == 1
    assert not path.parent.exists()


# -- encryption at rest ----------------------------------------------------------------


def test_sensitive_fields_are_encrypted_at_rest(
    dm: DataManager, store: Store, tmp_path: Path
) -> None:
    data = {"user": "ada", "ssn": "123-45-6789", "card": {"number": "4111111111111111"}}
    made = dm.store(data, meta("customer", tags=["pii"], sensitive=["ssn", "card"]))
    raw = store.redis.hget(store.key("data", "obj", made.id), "data")
    assert "123-45-6789" not in raw and "4111111111111111" not in raw and "ada" in raw
    assert dm.get(made.id).data == data
    assert dm.retrieve(DataQuery(tags=["pii"])).items[0].data == data
    key_file = tmp_path / "state" / "data.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() not in json.dumps(
        store.redis.hgetall(store.key("data", "obj", made.id))
    )
    dm.update(made.id, {"data": {"ssn": "987-65-4321"}}, expected_version=1)
    raw = store.redis.hget(store.key("data", "obj", made.id), "data")
    assert "987-65-4321" not in raw
    assert dm.get(made.id).data["ssn"] == "987-65-4321"


def test_a_wrong_key_is_a_clear_error(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    made = DataManager(store, str(tmp_path)).store({"pin": "0000"}, meta(sensitive=["pin"]))
    assert not (tmp_path / "state").exists()  # the env key was used, no file made
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    with pytest.raises(
        ConfigError, match=rf"field 'pin' of data object '{made.id}' cannot be decrypted"
    ):
        DataManager(store, str(tmp_path)).get(made.id)


def test_rotating_keys_keeps_old_values_readable(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV, old)
    made = DataManager(store, str(tmp_path)).store({"pin": "0000"}, meta(sensitive=["pin"]))
    monkeypatch.setenv(KEY_ENV, f"{new},{old}")
    assert DataManager(store, str(tmp_path)).get(made.id).data == {"pin": "0000"}


def test_sensitive_fields_without_any_key_are_refused(store: Store, tmp_path: Path) -> None:
    dm = DataManager(store, str(tmp_path))
    with pytest.raises(ConfigError, match=KEY_ENV):
        dm.store({"pin": "0000"}, meta(sensitive=["pin"]))
    assert dm.store({"pin": "public"}, meta()).version == 1


# -- backup and restore ----------------------------------------------------------------


def fill_realistic_state(store: Store, dm: DataManager) -> dict[str, Any]:
    """Registry, definitions, an execution with events, a queue with a consumer group and
    pending entries, a cache entry with a TTL, and data objects (JSON, sensitive, Arrow)."""
    r, k = store.redis, store.key
    r.hset(k("agents"), mapping={"echo": json.dumps({"spec": {"name": "echo"}}), "sum": "{}"})
    r.hset(k("wf", "review"), mapping={"v1": "name: review", "latest": 1, "counter": 1})
    r.sadd(k("wfs"), "review", "deploy")
    r.zadd(k("execs"), {"e1": 1700000000.25, "e2": 1700000001.5})
    r.hset(k("exec", "e1"), mapping={"meta": json.dumps({"id": "e1"}), "step:a": "{}"})
    for i in range(5):
        r.xadd(
            k("exec", "e1", "events"),
            {"event": json.dumps({"n": i}), "kind": "step"},
            id=f"1700000000000-{i}",
        )
    queue = k("hub", "queue", "jobs")
    for i in range(6):
        r.xadd(queue, {"body": f"job {i}"}, id=f"{1700000000100 + i}-0")
    r.xdel(queue, "1700000000105-0")  # the last id is kept even though its entry is gone
    r.xgroup_create(queue, "workers", id="0")
    r.xreadgroup("workers", "w1", {queue: ">"}, count=2)
    r.xreadgroup("workers", "w2", {queue: ">"}, count=1)
    r.xclaim(queue, "workers", "w2", 0, ["1700000000101-0"])  # delivered twice now
    r.xgroup_createconsumer(queue, "workers", "idle-one")
    r.xgroup_create(k("hub", "topic", "empty"), "g", id="$", mkstream=True)
    r.rpush(k("hub", "history"), "first", "second", "first")
    r.set(k("cache", "answer"), "42", ex=3600)
    r.set(k("counter"), 7)
    r.zadd(k("scores"), {"inf": float("inf"), "pi": 3.141592653589793, "neg": -1e-300})
    secret = dm.store({"user": "ada", "token": "s3cr3t"}, meta("cred", sensitive=["token"]))
    small = dm.store(table(20), meta("small", kind="dataset", tags=["arrow"]))
    large = dm.store(table(5_000), meta("large", kind="dataset", tags=["arrow"]))
    plain = dm.store({"n": 1}, meta("plain", tags=["x"], fields={"year": 2024}))
    return {"secret": secret, "small": small, "large": large, "plain": plain}


def snapshot(store: Store) -> dict[str, Any]:
    """Every key of the tenant with its type and content, read with plain redis-py calls."""
    r = store.redis
    out: dict[str, Any] = {}
    for key in sorted(r.keys(store.key("*"))):
        kind = r.type(key)
        ttl = r.pttl(key)
        if kind == "string":
            content: Any = r.get(key)
        elif kind == "hash":
            content = r.hgetall(key)
        elif kind == "list":
            content = r.lrange(key, 0, -1)
        elif kind == "set":
            content = sorted(r.smembers(key))
        elif kind == "zset":
            content = r.zrange(key, 0, -1, withscores=True)
        else:
            groups = []
            for g in r.xinfo_groups(key):
                pending = [
                    (p["message_id"], p["consumer"], p["times_delivered"])
                    for p in r.xpending_range(key, g["name"], "-", "+", 1000)
                ]
                consumers = sorted(c["name"] for c in r.xinfo_consumers(key, g["name"]))
                groups.append((g["name"], g["last-delivered-id"], consumers, pending))
            content = (r.xrange(key), r.xinfo_stream(key)["last-generated-id"], groups)
        out[key] = (kind, ttl > 0, content)
    return out


def test_backup_wipe_restore_gives_identical_content(any_store: Store, tmp_path: Path) -> None:
    dm = manager_for(any_store, tmp_path, inline_max_bytes=4096)
    made = fill_realistic_state(any_store, dm)
    before = snapshot(any_store)
    ttl_before = any_store.redis.pttl(any_store.key("cache", "answer"))

    result = dm.backup(BackupCriteria(label="nightly"))
    info = result.info
    assert info.counts.keys == len(before)
    assert info.counts.by_type == {
        "hash": 7 + 2,  # + the storage quota's usage and sizes, kept with the data
        "stream": 3,
        "set": 10,
        "zset": 3,
        "list": 1,
        "string": 2,
    }
    assert info.counts.by_prefix["data"] == 4 + 1 + 9 + 2 and info.counts.by_prefix["hub"] == 3
    assert (info.counts.ttl_keys, info.counts.blobs) == (1, 1)
    assert info.checksum.startswith("sha256:") and info.label == "nightly"
    files = {p.name for p in Path(info.uri).iterdir()}
    assert {
        "manifest.json",
        "keys.parquet",
        "stream.parquet",
        "stream_pending.parquet",
        "blobs",
    } <= files
    assert [b.backup_id for b in dm.list_backups()] == [info.backup_id]

    any_store.redis.flushdb()
    blob = tmp_path / "blobs" / any_store.tenant / "data" / made["large"].id / "v1.parquet"
    blob.unlink()  # the machine's blob store is lost too

    restored = dm.restore(info.backup_id)
    assert restored.checksum == info.checksum and restored.keys == len(before)
    after = snapshot(any_store)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    assert 0 < any_store.redis.pttl(any_store.key("cache", "answer")) <= ttl_before

    assert dm.get(made["secret"].id).data == {"user": "ada", "token": "s3cr3t"}
    assert dm.get(made["small"].id).data.equals(table(20))
    assert dm.get(made["large"].id).data.equals(table(5_000))
    assert ids(dm.retrieve(DataQuery(tags=["arrow"]))) == [made["large"].id, made["small"].id]
    assert ids(dm.retrieve(DataQuery(fields={"year": 2024}))) == [made["plain"].id]
    # The restored queue goes on where it was: new messages get new ids, pending ones redeliver.
    queue = any_store.key("hub", "queue", "jobs")
    assert any_store.redis.xadd(queue, {"body": "next"}) > "1700000000105-0"
    claimed = any_store.redis.xautoclaim(queue, "workers", "w3", min_idle_time=0, count=10)
    assert [eid for eid, _ in claimed[1]] == [
        "1700000000100-0",
        "1700000000101-0",
        "1700000000102-0",
    ]


def test_restore_into_a_tenant_with_keys_is_a_conflict(store: Store, dm: DataManager) -> None:
    dm.store({"a": 1}, meta())
    backup_id = dm.backup().info.backup_id
    store.redis.set(store.key("other"), "x")
    with pytest.raises(Conflict, match="already has keys"):
        dm.restore(backup_id)
    dm.update(dm.retrieve(DataQuery()).items[0].id, {"data": {"a": 2}}, expected_version=1)
    result = dm.restore(backup_id, into_empty=False)
    assert dm.retrieve(DataQuery()).items[0].data == {"a": 1}
    assert store.redis.get(store.key("other")) == "x"
    assert result.keys == len(store.redis.keys("*")) - 1


def test_a_backup_restores_into_another_tenant(
    store: Store, dm: DataManager, tmp_path: Path
) -> None:
    made = dm.store({"user": "ada", "pin": "1234"}, meta(sensitive=["pin"]))
    backup_id = dm.backup().info.backup_id
    other = store.for_tenant("clone")
    clone = DataManager(
        other, str(tmp_path / "blobs"), tmp_path / "state" / "data.key",
        backup_root=str(tmp_path / "blobs" / store.tenant / "backups"),
    )  # fmt: skip
    clone.restore(backup_id)
    assert clone.get(made.id).data == {"user": "ada", "pin": "1234"}


def test_backup_of_some_prefixes_only(store: Store, dm: DataManager) -> None:
    dm.store({"a": 1}, meta())
    store.redis.hset(store.key("agents"), "echo", "{}")
    store.redis.set(store.key("data*literal"), "glob characters are not wildcards")
    info = dm.backup(BackupCriteria(prefixes=["agents", "data*"])).info
    assert info.counts.by_prefix == {"agents": 1, "data*literal": 1}


def test_backups_are_listed_newest_first(dm: DataManager) -> None:
    dm.store({"a": 1}, meta())
    first = dm.backup(BackupCriteria(label="first")).info
    second = dm.backup(BackupCriteria(label="second")).info
    assert [(b.backup_id, b.label) for b in dm.list_backups()] == [
        (second.backup_id, "second"),
        (first.backup_id, "first"),
    ]


def test_blob_and_backup_roots_may_be_uris(store: Store, tmp_path: Path) -> None:
    dm = DataManager(
        store,
        f"file://{tmp_path}/blobs",
        tmp_path / "data.key",
        backup_root=f"file://{tmp_path}/backups",
        inline_max_bytes=0,
    )
    made = dm.store(table(50), meta("t"))
    info = dm.backup().info
    assert info.uri == f"file://{tmp_path}/backups/{info.backup_id}"
    assert (tmp_path / "backups" / info.backup_id / "blobs" / made.id / "v1.parquet").exists()
    store.redis.flushdb()
    dm.restore(info.backup_id)
    assert dm.get(made.id).data.equals(table(50))


def test_from_settings_keeps_blobs_and_key_under_the_state_dir(
    store: Store, tmp_path: Path
) -> None:
    settings = load_settings(redis_url=store.url, state_dir=str(tmp_path / "state"))
    dm = DataManager.from_settings(store, settings)
    made = dm.store(table(10), meta())
    dm.store({"pin": "1"}, meta(sensitive=["pin"]))
    assert (settings.state_dir / "data.key").exists()
    assert dm.get(made.id).data.equals(table(10))
    assert dm.backup().info.uri.startswith(f"{settings.state_dir}/blobs/{store.tenant}/backups/")


def test_a_damaged_backup_is_refused_before_anything_is_written(
    store: Store, dm: DataManager
) -> None:
    dm.store({"a": 1}, meta())
    info = dm.backup().info
    manifest_path = Path(info.uri) / "manifest.json"
    manifest = BackupManifest.model_validate_json(manifest_path.read_text())
    tampered = manifest.model_copy(update={"checksum": "sha256:" + "0" * 64})
    manifest_path.write_text(tampered.model_dump_json())
    store.redis.flushdb()
    with pytest.raises(Conflict, match="is damaged"):
        dm.restore(info.backup_id)
    assert store.redis.dbsize() == 0


def test_restore_of_an_unknown_backup(dm: DataManager) -> None:
    with pytest.raises(NotFound, match="'20990101T000000Z-nope'"):
        dm.restore("20990101T000000Z-nope")
    with pytest.raises(InputInvalid):
        dm.restore("../escape")
    assert dm.list_backups() == []


def test_the_store_unreachable_is_a_retryable_error(tmp_path: Path) -> None:
    from cluster.errors import StoreUnavailable

    client = redis.Redis(
        host="127.0.0.1",
        port=1,
        socket_connect_timeout=0.2,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),  # redis-py's default waits out ten backoffs first
    )
    store = Store(client, "redis://127.0.0.1:1/0", "t")
    with pytest.raises(StoreUnavailable) as caught:
        DataManager(store, str(tmp_path)).get("x")
    assert caught.value.retryable


# -- contracts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        meta(
            "m",
            kind="k",
            tags=["a"],
            fields={"b": True, "i": 1, "f": 1.5, "s": "x"},
            sensitive=["p"],
        ),
        DataQuery(tags=["a"], fields={"x": 1}, created_since=1.0, limit=3),
        DataObject(
            id="a",
            version=1,
            created_at=1,
            updated_at=2,
            metadata=meta(),
            format="json",
            data={"x": [1]},
        ),
        DataObject(
            id="a",
            version=1,
            created_at=1,
            updated_at=2,
            metadata=meta(),
            format="arrow",
            data=table(3),
        ),
        StorageResult(id="a", created_at=1.0),
        BackupCriteria(prefixes=["data:"], label="x"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_contracts_round_trip(model: BaseModel) -> None:
    assert pickle.loads(pickle.dumps(model)) == model
    again = type(model).model_validate_json(model.model_dump_json())
    if isinstance(model, DataObject) and isinstance(model.data, pa.Table):
        assert isinstance(again, DataObject) and again.data.equals(model.data)
    else:
        assert again == model


def test_inputs_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        DataQuery.model_validate({"tag": ["a"]})
    with pytest.raises(ValueError, match="tags"):
        DataMetadata(name="x", tags=["has space"])
    assert os.environ.get(KEY_ENV) is None
