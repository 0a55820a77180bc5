"""The connection to Ray: join an address, or start this machine's head with token auth.

`dafnck up` starts a head with `ray start` (so the cluster outlives the CLI), with its
session files under `<state_dir>/ray` and Ray token authentication on; its GCS address is
kept in `<state_dir>/cluster.json`, which later commands read to join it. The state
directory and Ray's are private to the user (0700), and so is Ray's token file (0600).
Drivers log JSON lines through Ray's own `LoggingConfig`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import psutil
import ray

from cluster.errors import ClusterUnavailable
from cluster.settings import RAY_NAMESPACE, Settings
from cluster.valkey import free_port, private_dir

_RAY_START_TIMEOUT_S = 120


def _state_file(settings: Settings) -> Path:
    return settings.state_dir / "cluster.json"


def _temp_dir(settings: Settings) -> Path:
    return settings.state_dir / "ray"


def recorded_cluster(settings: Settings) -> dict[str, Any] | None:
    """What `dafnck up` recorded about the head it started, if that head still runs."""
    try:
        record: dict[str, Any] = json.loads(_state_file(settings).read_text())
    except (OSError, ValueError):
        return None
    return record if _head_processes(settings) else None


def _head_processes(settings: Settings) -> list[psutil.Process]:
    """Ray processes whose command line names this state directory's session files."""
    marker = str(_temp_dir(settings))
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info.get("cmdline") or []
        except psutil.Error:
            continue
        if any(marker in part for part in cmdline):
            found.append(proc)
    return found


def session_processes(settings: Settings) -> list[psutil.Process]:
    """Every process of the head `dafnck up` started here.

    Those naming the session files (GCS, raylet, dashboard, monitors), the ones recorded
    when it started, and all their descendants: Ray's agents and workers rename
    themselves `ray::...` and name no path, but they are the raylet's children.
    """
    found: dict[int, psutil.Process] = {}
    for proc in [*_head_processes(settings), *_recorded_processes(settings)]:
        found.setdefault(proc.pid, proc)
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    return list(found.values())


def _recorded_processes(settings: Settings) -> list[psutil.Process]:
    """The processes recorded by `start_head` that still run (same pid and start time)."""
    try:
        record = json.loads(_state_file(settings).read_text())
    except (OSError, ValueError):
        return []
    alive = []
    for entry in record.get("processes", []):
        with contextlib.suppress(psutil.Error, KeyError, TypeError):
            proc = psutil.Process(int(entry["pid"]))
            if abs(proc.create_time() - float(entry["create_time"])) < 0.01:
                alive.append(proc)
    return alive


def _describe(procs: list[psutil.Process]) -> list[dict[str, Any]]:
    described = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            described.append({"pid": proc.pid, "create_time": proc.create_time()})
    return described


def address_to_join(settings: Settings, address: str | None = None) -> str | None:
    """An explicit address, `RAY_ADDRESS`, the settings' address, or the recorded head's."""
    explicit = address or os.environ.get("RAY_ADDRESS") or settings.ray_address
    if explicit:
        return explicit
    record = recorded_cluster(settings)
    return str(record["address"]) if record else None


def start_head(settings: Settings, num_cpus: int | None = None) -> dict[str, Any]:
    """Start a Ray head on this machine with token auth and record its address.

    Raises:
        ClusterUnavailable: `ray start` failed; its output is in the message.
    """
    private_dir(settings.state_dir)
    temp_dir = private_dir(_temp_dir(settings))
    args = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
        "--temp-dir", str(temp_dir),
        "--port", str(free_port()),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(free_port()),
        # Its default (52365) is taken when another Ray runs here; without it no job runs.
        "--dashboard-agent-listen-port", str(free_port()),
        "--disable-usage-stats",
    ]  # fmt: skip
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        # `ray start` in token mode refuses to run without a token: make one if missing.
        subprocess.run(
            [*args[:3], "get-auth-token", "--generate"],
            env=env, capture_output=True, check=False, umask=0o077,
        )  # fmt: skip
    protect_token()
    # umask 077: the session files, logs and sockets Ray's processes make are the user's only.
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=_RAY_START_TIMEOUT_S, umask=0o077
    )
    private_dir(temp_dir)  # Ray opens its temp dir to everyone (0777): close it again
    if done.returncode != 0:
        raise ClusterUnavailable(
            f"`ray start --head` failed: {done.stderr[-1500:] or done.stdout[-1500:]}"
        )
    address_file = temp_dir / "ray_current_cluster"
    address = address_file.read_text().strip() if address_file.exists() else "auto"
    record = {"address": address, "started_at": time.time()}
    # `dafnck down` ends these (and their descendants) even if they no longer name the session.
    record["processes"] = _describe(session_processes(settings))
    _state_file(settings).write_text(json.dumps(record))
    return record


def token_path() -> Path:
    """Where Ray reads its auth token from: `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def protect_token() -> None:
    """Make Ray's token file readable by its owner only (Ray writes it 0644)."""
    path = token_path()
    if path.is_file():
        path.chmod(0o600)


def stop_head(settings: Settings, timeout_s: float = 15.0) -> int:
    """Stop the head that `dafnck up` started under this state directory (and only it).

    Returns when every one of its processes (see `session_processes`) is gone: SIGTERM,
    then SIGKILL to what is left after `timeout_s`. Processes are ended by pid only.

    Raises:
        ClusterUnavailable: some process survived SIGKILL (its pid is in the message).
    """
    procs = session_processes(settings)
    _signal(procs, "terminate")
    alive = _wait_gone(procs, timeout_s)
    _signal(alive, "kill")
    left = [p.pid for p in _wait_gone(alive, timeout_s)]
    if left:
        raise ClusterUnavailable(f"Ray processes {left} survived SIGKILL; end them by hand")
    _state_file(settings).unlink(missing_ok=True)
    return len(procs)


def _signal(procs: list[psutil.Process], how: Literal["terminate", "kill"]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            getattr(proc, how)()


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until none of `procs` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    return alive


def _running(proc: psutil.Process) -> bool:
    """Still there and not a zombie waiting for its parent to reap it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


#: What `init_ray` does when there is no cluster to join.
Missing = Literal["start_head", "local", "fail"]


def init_ray(
    settings: Settings, address: str | None = None, *, missing: Missing = "start_head"
) -> str:
    """Connect this process to Ray; returns the dashboard URL (may be empty).

    Joins `address` (or the one found by `address_to_join`). With none: `start_head`
    starts this machine's head (it outlives the process), `local` starts a private Ray
    for this process only, `fail` raises.

    Raises:
        ClusterUnavailable: the address cannot be reached, or nothing runs and `missing="fail"`.
    """
    if ray.is_initialized():
        return _dashboard_url()
    _token_auth_on()
    protect_token()
    target = address_to_join(settings, address)
    if target is None and missing == "fail":
        raise ClusterUnavailable(
            "no DafnckMachine cluster is running here; start one with `dafnck up`"
        )
    if target is None and missing == "start_head":
        target = start_head(settings)["address"]
    logging_config = ray.LoggingConfig(encoding="JSON", log_level=settings.log_level)
    try:
        context = ray.init(
            address=target,
            namespace=RAY_NAMESPACE,
            logging_config=logging_config,
            log_to_driver=False,
            configure_logging=False,
            job_config=ray.job_config.JobConfig(metadata=job_metadata(settings)),
        )
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterUnavailable(f"cannot join the Ray cluster at {target!r}: {exc}") from None
    if _temp_dir(settings).is_dir():  # every Ray process joining makes it 0777 again
        private_dir(_temp_dir(settings))
    global _dashboard
    _dashboard = context.dashboard_url or ""
    return _dashboard_url()


def job_metadata(settings: Settings) -> dict[str, str]:
    """What the Ray dashboard's Jobs view shows about this driver."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]]) if sys.argv else "python"
    from cluster.schema_version import platform_version

    return {"dafnck.tenant": settings.tenant, "dafnck.command": command[:200],
            "dafnck.version": platform_version()}  # fmt: skip


def _token_auth_on() -> None:
    """Make this driver present Ray's token (`~/.ray/auth_token` or `RAY_AUTH_TOKEN`).

    Ray reads `RAY_AUTH_MODE` once; when it is unset we set it and let Ray's own helper
    refresh its config, as `ray.init()` does for a new local cluster.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


_dashboard = ""


def _dashboard_url() -> str:
    """The dashboard URL of the cluster this process joined (Ray gives it without a scheme)."""
    return (
        f"http://{_dashboard}" if _dashboard and not _dashboard.startswith("http") else _dashboard
    )
