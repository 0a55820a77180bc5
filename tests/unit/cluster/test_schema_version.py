"""The store records its layout; a store of the previous layout (no version key, Arrow
tables as `{"$arrow": path}` markers inside step outputs) is migrated forward after a
backup, and a store of a newer layout is refused naming both versions. Real Valkey."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from cluster.errors import ConfigError
from cluster.schema_version import CURRENT, SCHEMA_KEY, ensure_schema, stored_version
from cluster.settings import Settings
from cluster.store import connect_store
from cluster.valkey import ensure_valkey, stop_valkey
from workflows.migrations import MIGRATIONS
from workflows.store import BLOBS_FIELD, BlobStore, ExecutionStore


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[redis.Redis, Settings]]:
    """An empty store of its own, and settings whose state (and blobs) are under tmp_path."""
    url = ensure_valkey(tmp_path)
    settings = Settings(state_dir=tmp_path, redis_url=url, tenant="acme")
    yield connect_store(settings, url=url).redis, settings
    stop_valkey(tmp_path)


def test_an_empty_store_gets_todays_version(fresh: tuple[redis.Redis, Settings]) -> None:
    client, settings = fresh
    assert stored_version(client) is None
    assert ensure_schema(client, settings, MIGRATIONS) == []
    assert client.get(SCHEMA_KEY) == str(CURRENT)


def test_a_store_of_the_previous_layout_is_backed_up_and_migrated(
    fresh: tuple[redis.Redis, Settings],
) -> None:
    client, settings = fresh
    table = pa.table({"path": ["a.py", "b.py"], "functions": [3, 1]})
    legacy = f"{settings.blobs}/e1/analyse.files.parquet"  # where version 1 wrote it
    Path(legacy).parent.mkdir(parents=True)
    pq.write_table(table, legacy)
    output = {"files": {"$arrow": legacy}, "agent": {"$arrow": "/etc/passwd"}, "n": 2}
    step = {"status": "succeeded", "output": output}
    client.hset("dafnck:acme:exec:e1", "step:analyse", json.dumps(step))
    client.hset("dafnck:acme:exec:e1", "meta", "{}")
    assert stored_version(client) == 1

    assert ensure_schema(client, settings, MIGRATIONS) == [1]
    assert client.get(SCHEMA_KEY) == str(CURRENT)
    (backup,) = (settings.state_dir / "backups").glob("schema-v1-*.jsonl")
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    assert [json.loads(line)["key"] for line in backup.read_text().splitlines()] == [
        "dafnck:acme:exec:e1"
    ]
    stored = json.loads(str(client.hget("dafnck:acme:exec:e1", "step:analyse")))
    assert stored["output"]["files"] is None and stored[BLOBS_FIELD]
    executions = ExecutionStore(connect_store(settings), BlobStore(settings.blobs))
    state = executions.decode_step("e1", "analyse", json.dumps(stored))
    assert state.output["files"].equals(table)  # read from the tenant's outputs
    assert state.output["agent"] == {"$arrow": "/etc/passwd"}  # not the platform's: a dict
    assert state.output["n"] == 2
    assert ensure_schema(client, settings, MIGRATIONS) == []  # done once


def test_a_store_of_a_newer_layout_is_refused_naming_both(
    fresh: tuple[redis.Redis, Settings],
) -> None:
    client, settings = fresh
    client.set(SCHEMA_KEY, CURRENT + 1)
    with pytest.raises(ConfigError) as caught:
        ensure_schema(client, settings, MIGRATIONS)
    assert f"schema version {CURRENT + 1}" in caught.value.message
    assert f"reads schema {CURRENT}" in caught.value.message
    assert client.get(SCHEMA_KEY) == str(CURRENT + 1)
