"""The embedded Valkey: started once per state directory, reused, durable across restarts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.valkey import ensure_valkey, running_url, stop_valkey


@pytest.fixture
def fresh_state_dir() -> Iterator[Path]:
    """A short, private state directory; whatever Valkey runs under it is stopped after."""
    path = Path(tempfile.mkdtemp(prefix="dk"))
    yield path
    stop_valkey(path)
    shutil.rmtree(path, ignore_errors=True)


def recorded_pid(state_dir: Path) -> int:
    return int(json.loads((state_dir / "valkey" / "server.json").read_text())["pid"])


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_second_call_reuses_the_running_server(fresh_state_dir: Path) -> None:
    url = ensure_valkey(fresh_state_dir)
    pid = recorded_pid(fresh_state_dir)
    assert redis.Redis.from_url(url).ping()
    assert ensure_valkey(fresh_state_dir) == url
    assert recorded_pid(fresh_state_dir) == pid
    assert running_url(fresh_state_dir) == url


def test_data_survives_a_restart(fresh_state_dir: Path) -> None:
    url = ensure_valkey(fresh_state_dir)
    client = redis.Redis.from_url(url, decode_responses=True)
    client.hset("dafnck:acme:agents", "echo@1.0.0", '{"spec": "kept"}')
    client.close()
    assert stop_valkey(fresh_state_dir)
    again = redis.Redis.from_url(ensure_valkey(fresh_state_dir), decode_responses=True)
    try:
        assert again.hget("dafnck:acme:agents", "echo@1.0.0") == '{"spec": "kept"}'
    finally:
        again.close()


def test_stop_stops_the_server(fresh_state_dir: Path) -> None:
    url = ensure_valkey(fresh_state_dir)
    pid = recorded_pid(fresh_state_dir)
    assert stop_valkey(fresh_state_dir) is True
    assert not alive(pid)
    assert running_url(fresh_state_dir) is None
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    assert stop_valkey(fresh_state_dir) is False  # nothing left to stop


def test_nothing_runs_before_the_first_call(fresh_state_dir: Path) -> None:
    assert running_url(fresh_state_dir) is None
    assert stop_valkey(fresh_state_dir) is False
