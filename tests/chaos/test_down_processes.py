"""`dafnck down` returns only when every process `dafnck up` started is gone.

Ray's dashboard and runtime-env agents rename themselves `ray::...` and name no path of
the session, so finding the head by command line alone left them running for minutes.
Runs the real CLI against its own Ray head and Valkey (its own state directory)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cluster.valkey import free_port

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

DAFNCK = str(Path(sys.executable).parent / "dafnck")


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    state = Path(tempfile.mkdtemp(prefix="dkdn"))  # short: Ray's socket paths live under it
    env = {**os.environ, "DAFNCK_STATE_DIR": str(state), "DAFNCK_API_PORT": str(free_port())}
    env.pop("RAY_ADDRESS", None)
    yield env, tmp_path
    subprocess.run([DAFNCK, "down"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    shutil.rmtree(state, ignore_errors=True)


def dafnck(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [DAFNCK, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"dafnck {' '.join(args)} failed: {done.stdout}\n{done.stderr}"
    return done.stdout


def started_by(state: Path) -> dict[int, tuple[float, str]]:
    """pid -> (start time, name) of every process naming `state`, and their descendants,
    and the embedded Valkey (its pid recorded under `state`)."""
    found: dict[int, tuple[float, str]] = {}
    valkey = json.loads((state / "valkey" / "server.json").read_text())["pid"]
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info.get("cmdline") or []
            if proc.pid != valkey and not any(str(state) in part for part in cmdline):
                continue
            for p in [proc, *proc.children(recursive=True)]:
                found[p.pid] = (p.create_time(), p.name())
        except psutil.Error:
            continue
    return found


def still_running(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        same = abs(proc.create_time() - create_time) < 0.01
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_down_ends_every_process_up_started(cli: tuple[dict[str, str], Path]) -> None:
    env, cwd = cli
    dafnck(env, cwd, "up", "--num-cpus", "2")
    started = started_by(Path(env["DAFNCK_STATE_DIR"]))
    names = {name for _, name in started.values()}
    # The ones that outlived `down` before: children of the raylet naming no session path.
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
    assert any("valkey" in name for name in names), names

    dafnck(env, cwd, "down")
    left = {pid: name for pid, (created, name) in started.items() if still_running(pid, created)}
    assert left == {}
