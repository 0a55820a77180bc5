"""A workflow submitted as a Ray job: `dafnck submit` sends `dafnck agents apply && dafnck run`
through `JobSubmissionClient` to a cluster started by `dafnck up` (dashboard on, token
auth on); the job's driver joins that cluster and its store, the workflow succeeds, and its
output is in the job's logs. The submission id is the idempotency key. Ray's own
`ray job submit --working-dir . -- dafnck run ...` runs the same.

The real CLI in subprocesses against its own Ray head and Valkey (its own state directory),
as tests/chaos/test_down_up.py does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.valkey import stop_valkey
from tests.fixtures.scale_agents import stop_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAFNCK = str(BIN / "dafnck")


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    state = Path(tempfile.mkdtemp(prefix="dkjob"))  # short: Ray's socket paths live under it
    env = {
        **os.environ,
        "DAFNCK_STATE_DIR": str(state),
        "DAFNCK_API_PORT": "0",  # the job server is Ray's dashboard; the API is not needed
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `dafnck` for the job
    }
    env.pop("RAY_ADDRESS", None)
    yield env
    stop_cluster(state)
    shutil.rmtree(state, ignore_errors=True)


def dafnck(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DAFNCK, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_a_workflow_submitted_as_a_ray_job_runs_on_the_cluster_and_logs_there(
    env: dict[str, str], tmp_path: Path
) -> None:
    # The review agents' workspace (they run where `up` starts the cluster); the report is
    # written as <workspace>/reports/review.md, never where an input says.
    env = {**env, "DAFNCK_WORKSPACE_ROOT": str(tmp_path)}
    up = dafnck(env, "up", "--num-cpus", "2")
    assert up.returncode == 0, up.stderr
    dashboard = re.search(r"Ray dashboard\s+(http://\S+)", up.stdout)
    assert dashboard, up.stdout
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("def f(x):\n    if x:\n        return 1\n    return 2\n")
    report = tmp_path / "reports" / "review.md"
    # The job's driver sees another state directory: it must find the store through the
    # supervisor it joins, not start an embedded one of its own.
    elsewhere = tmp_path / "elsewhere"
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(f"working_dir: .\nenv_vars: {{DAFNCK_STATE_DIR: '{elsewhere}'}}\n")
    args = [
        "submit", "configs/workflows/review.yaml", "--agents", "configs/agents/review.yaml",
        "--input", f"root={code}", "--runtime-env",
        str(runtime_env), "--submission-id", "review-once", "--wait", "--timeout", "240",
    ]  # fmt: skip

    first = dafnck(env, *args)
    own_store = (elsewhere / "valkey").exists()
    if own_store:
        stop_valkey(elsewhere)
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    assert not own_store, "the job's driver started a store of its own"
    assert "job review-once submitted" in first.stdout
    assert "agent file-analyser@" in first.stdout  # the job's log: agents applied ...
    assert "job review-once: SUCCEEDED" in first.stdout
    assert report.read_text().startswith("# Code review of")  # ... and the workflow ran

    again = dafnck(env, *args)  # the same submission id: nothing runs twice
    assert again.returncode == 0, again.stderr
    assert "job review-once already submitted" in again.stdout
    report.unlink()

    # Ray's own CLI, as Ray users submit: the same `dafnck run` as the job's entrypoint.
    ray_cli = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", dashboard.group(1),
         "--working-dir", ".", "--runtime-env", "configs/runtime_env.yaml",
         "--submission-id", "via-ray", "--", "dafnck", "run", "configs/workflows/review.yaml",
         "--input", f"root={code}"],
        env={**env, "RAY_AUTH_MODE": "token"}, cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert ray_cli.returncode == 0, f"{ray_cli.stdout[-3000:]}\n{ray_cli.stderr[-3000:]}"
    assert "Job 'via-ray' succeeded" in ray_cli.stdout
    assert report.read_text().startswith("# Code review of")

    info = subprocess.run(
        [sys.executable, "-c",
         "import sys; from cluster.cli.jobs import job_client; "
         "print(job_client(sys.argv[1]).get_job_info('review-once').metadata)",
         dashboard.group(1)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert "'tenant': 'default'" in info.stdout and "'workflow': 'review'" in info.stdout
