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
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster.valkey import ensure_valkey, running_url, stop_valkey

#: redis-py retries a refused connection (and a refused password) ten times with backoff:
#: a client that is meant to be refused gives up at once.
ONCE = Retry(NoBackoff(), 0)


@pytest.fixture
def fresh_state_dir() -> Iterator[Path]:
    """A short, private state directory; whatever Valkey runs under it is stopped after."""
    path = Path(tempfile.mkdtemp(prefix="dk"))
    yield path
    stop_valkey(path)
    shutil.rmtree(path, ignore_errors=True)


def recorded_pid(state_dir: Path) -> int:
    return int(json.loads((state_dir / "valkey" / "server.json").read_text())["pid"])


def recorded_port(state_dir: Path) -> int:
    return int(json.loads((state_dir / "valkey" / "server.json").read_text())["port"])


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
        redis.Redis.from_url(url, socket_connect_timeout=0.5, retry=ONCE).ping()
    assert stop_valkey(fresh_state_dir) is False  # nothing left to stop


def test_nothing_runs_before_the_first_call(fresh_state_dir: Path) -> None:
    assert running_url(fresh_state_dir) is None
    assert stop_valkey(fresh_state_dir) is False


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_it_asks_for_a_password_kept_in_a_private_file(fresh_state_dir: Path) -> None:
    url = ensure_valkey(fresh_state_dir)
    directory = fresh_state_dir / "valkey"
    password = (directory / "password").read_text().strip()
    assert len(password) >= 32 and f":{password}@" in url
    port = recorded_port(fresh_state_dir)
    for protocol in (2, 3):  # NOAUTH on RESP2, HELLO refused on RESP3
        anonymous = redis.Redis(port=port, protocol=protocol, socket_connect_timeout=1, retry=ONCE)
        with pytest.raises(redis.AuthenticationError):
            anonymous.get("dafnck:_auth:apikeys")
        anonymous.close()
    wrong = redis.Redis(port=port, password="guess", socket_connect_timeout=1, retry=ONCE)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()


def test_state_and_data_are_private_to_the_user(fresh_state_dir: Path) -> None:
    os.chmod(fresh_state_dir, 0o755)  # as mkdtemp's caller might leave it
    client = redis.Redis.from_url(ensure_valkey(fresh_state_dir))
    client.set("dafnck:acme:k", "v")  # the AOF has something in it
    client.close()
    directory = fresh_state_dir / "valkey"
    assert mode(fresh_state_dir) == 0o700 and mode(directory) == 0o700
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"password", "users.acl", "server.json", "valkey.log"}
    assert any(p.name.startswith("dafnck.aof") for p in files)
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert mode(directory / "appendonlydir") == 0o700


def test_it_stops_taking_writes_at_maxmemory_and_never_evicts(fresh_state_dir: Path) -> None:
    client = redis.Redis.from_url(ensure_valkey(fresh_state_dir, maxmemory=64 * 1024 * 1024))
    try:
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()


def test_the_default_maxmemory_is_a_quarter_of_ram_at_most_2_gib() -> None:
    import psutil

    from cluster.valkey import default_maxmemory

    assert default_maxmemory() == min(psutil.virtual_memory().total // 4, 2 * 1024**3)


def test_tenant_users_survive_a_restart(fresh_state_dir: Path) -> None:
    from cluster.redis_acl import tenant_url

    acme = tenant_url(ensure_valkey(fresh_state_dir), "acme")
    assert stop_valkey(fresh_state_dir)
    admin = ensure_valkey(fresh_state_dir)
    client = redis.Redis.from_url(
        acme.rpartition("@")[0] + "@" + admin.rpartition("@")[2], decode_responses=True
    )
    try:
        client.set("dafnck:acme:k", "v")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("dafnck:other:k")
    finally:
        client.close()


def test_a_server_started_without_a_password_is_restarted_with_one(fresh_state_dir: Path) -> None:
    from cluster.valkey import free_port, start_server

    port = free_port()
    legacy = start_server(fresh_state_dir / "valkey", port)  # as an older version left it
    (fresh_state_dir / "valkey" / "server.json").write_text(
        json.dumps({"port": port, "pid": legacy.pid})
    )
    url = ensure_valkey(fresh_state_dir)
    assert legacy.wait(10) is not None
    assert redis.Redis.from_url(url).ping()


def test_a_bare_url_of_the_embedded_server_gets_its_password(fresh_state_dir: Path) -> None:
    from cluster.settings import load_settings
    from cluster.store import resolve_redis_url

    admin = ensure_valkey(fresh_state_dir)
    bare = f"redis://127.0.0.1:{recorded_port(fresh_state_dir)}/0"

    def resolved(url: str) -> str:
        return resolve_redis_url(load_settings(redis_url=url, state_dir=str(fresh_state_dir)))

    assert resolved(bare) == admin
    assert resolved("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"  # another server
    assert resolved("redis://:own@127.0.0.1:1/0") == "redis://:own@127.0.0.1:1/0"
