"""Executions survive `dafnck down` and `dafnck up`: the embedded Valkey keeps its AOF, and
the new supervisor resumes what was running (here, a step waiting at its approval gate).

Runs the real CLI in subprocesses against its own Ray head and Valkey (its own state
directory), separate from the test session's Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.valkey import free_port
from tests.fixtures.scale_agents import stop_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
DAFNCK = str(Path(sys.executable).parent / "dafnck")


@pytest.fixture
def cli() -> Iterator[tuple[dict[str, str], Path]]:
    state = Path(tempfile.mkdtemp(prefix="dkup"))  # short: Ray's socket paths live under it
    env = {**os.environ, "DAFNCK_STATE_DIR": str(state), "DAFNCK_API_PORT": str(free_port())}
    env.pop("RAY_ADDRESS", None)
    yield env, state
    stop_cluster(state)  # `dafnck down` without its grace: the test's own down was checked
    shutil.rmtree(state, ignore_errors=True)


def dafnck(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [DAFNCK, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"dafnck {' '.join(args)} failed: {done.stdout}\n{done.stderr}"
    return done.stdout


def status_of(env: dict[str, str], execution_id: str) -> str:
    return str(json.loads(dafnck(env, "executions", "show", execution_id))["status"])


def wait_for(env: dict[str, str], execution_id: str, wanted: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = status_of(env, execution_id)
        if status == wanted:
            return
        time.sleep(1)
    raise AssertionError(f"execution {execution_id} is {status}, not {wanted}")


def assert_private(state: Path) -> None:
    """What `dafnck up` leaves on disk is the user's alone: directories 0700, secrets 0600.
    (Ray makes its own temp dir, `<state>/ray`, 0777 again whenever a process joins: the
    state directory around it is what keeps others out.)"""
    valkey = state / "valkey"
    dirs = [state, valkey, *[d for d in [state / "blobs"] if d.exists()]]
    assert {str(d): oct(d.stat().st_mode & 0o777) for d in dirs} == {str(d): "0o700" for d in dirs}
    files = [valkey / "password", valkey / "users.acl", *(valkey / "appendonlydir").iterdir()]
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    files += [token] if token.exists() else []
    assert {str(f): oct(f.stat().st_mode & 0o777) for f in files} == {
        str(f): "0o600" for f in files
    }


def test_an_execution_waiting_for_approval_survives_down_and_up(
    cli: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, state = cli
    # The review agents' workspace (where `up` starts them): a copy of cluster/ reviewed
    # there, the report written as <workspace>/reports/review.md.
    env = {**env, "DAFNCK_WORKSPACE_ROOT": str(tmp_path)}
    shutil.copytree(
        REPO / "cluster", tmp_path / "cluster", ignore=shutil.ignore_patterns("__pycache__")
    )
    dafnck(env, "up", "--num-cpus", "2")
    assert_private(state)
    dafnck(env, "agents", "apply", "-f", "configs/agents/review.yaml")
    report = tmp_path / "reports" / "review.md"
    execution_id = dafnck(
        env, "run", "configs/workflows/approval-demo.yaml", "--detach", "--input", "root=cluster",
    ).strip().splitlines()[-1]  # fmt: skip
    wait_for(env, execution_id, "waiting_approval")

    dafnck(env, "down")
    dafnck(env, "up", "--num-cpus", "2")
    assert status_of(env, execution_id) == "waiting_approval"
    dafnck(env, "executions", "approve", execution_id, "report", "--reason", "after a restart")
    wait_for(env, execution_id, "succeeded")
    assert report.read_text().startswith("# Code review of")
