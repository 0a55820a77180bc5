"""`dafnck up` on a store of another layout: a newer one is refused before anything starts,
naming both versions; one written before versions were recorded is migrated (backup first).

Runs the real CLI in a subprocess against its own state directory and embedded Valkey."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.schema_version import CURRENT, SCHEMA_KEY
from cluster.valkey import ensure_valkey
from tests.fixtures.scale_agents import stop_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(400)]

DAFNCK = str(Path(sys.executable).parent / "dafnck")


@pytest.fixture
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, redis.Redis]]:
    directory = tmp_path_factory.mktemp("up")
    client = redis.Redis.from_url(ensure_valkey(directory), decode_responses=True)
    yield directory, client
    client.close()
    stop_cluster(directory)  # `dafnck down` without its grace: nothing here is worth keeping


def up(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAFNCK_STATE_DIR": str(directory), "DAFNCK_API_PORT": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [DAFNCK, "up", "--num-cpus", "1"], env=env, capture_output=True, text=True, timeout=300
    )


def test_up_refuses_a_store_written_by_a_newer_layout(state: tuple[Path, redis.Redis]) -> None:
    directory, client = state
    client.set(SCHEMA_KEY, CURRENT + 1)
    done = up(directory)
    assert done.returncode == 2, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert f"schema version {CURRENT + 1}" in message and f"reads schema {CURRENT}" in message
    assert not (directory / "cluster.json").exists()  # no Ray head was started
    assert client.get(SCHEMA_KEY) == str(CURRENT + 1)


def test_up_migrates_a_store_of_the_previous_layout(state: tuple[Path, redis.Redis]) -> None:
    directory, client = state
    marker = {"$arrow": "/etc/passwd"}  # a version-1 step output holding an agent's dict
    step = {"status": "succeeded", "output": {"rows": marker}}
    client.hset("dafnck:default:exec:old1", "step:list", json.dumps(step))
    done = up(directory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"store migrated from schema 1 to 2 (of {CURRENT})" in done.stdout
    assert client.get(SCHEMA_KEY) == str(CURRENT)
    assert client.hget("dafnck:_meta:written_by", "schema") == str(CURRENT)
    (backup,) = (directory / "backups").glob("schema-v1-*.jsonl")
    assert json.loads(backup.read_text())["key"] == "dafnck:default:exec:old1"
    stored = json.loads(str(client.hget("dafnck:default:exec:old1", "step:list")))
    assert stored["output"] == {"rows": marker}  # not where version 1 wrote tables: kept as is
