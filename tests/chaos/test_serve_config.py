"""`serve run configs/serve.yaml` deploys the API on a local Ray: it answers `/healthz` and
runs a task through it. The file is deployed as it is, except for its ports (free ones, so
it never meets another Ray's Serve here).

Runs the real CLIs in subprocesses against their own Ray head and Valkey (`dafnck up` with
the API off, so the config is what serves it), separate from the test session's Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.valkey import free_port
from tests.fixtures.scale_agents import stop_cluster
from tests.integration.helpers import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, str]]:
    state = Path(tempfile.mkdtemp(prefix="dksv"))  # short: Ray's socket paths live under it
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "hello.py").write_text("def greet(name):\n    return name\n")
    env = {
        **os.environ,
        "DAFNCK_STATE_DIR": str(state),
        "DAFNCK_API_PORT": "0",  # the API comes from configs/serve.yaml, not from `up`
        "DAFNCK_WORKSPACE_ROOT": str(workspace),
        "RAY_AUTH_MODE": "token",
    }
    env.pop("RAY_ADDRESS", None)
    yield env
    stop_cluster(state)  # `dafnck down` without its grace: nothing here is worth keeping
    shutil.rmtree(state, ignore_errors=True)


def cli(env: dict[str, str], *args: str | Path) -> str:
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def test_serve_run_of_the_config_serves_the_api(cluster: dict[str, str], tmp_path: Path) -> None:
    env = cluster
    cli(env, BIN / "dafnck", "up", "--num-cpus", "2")
    config = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["grpc_options"]["port"] = free_port()
    deployed = tmp_path / "serve.yaml"
    deployed.write_text(yaml.safe_dump(config))
    gcs = json.loads((Path(env["DAFNCK_STATE_DIR"]) / "cluster.json").read_text())["address"]
    cli(env, BIN / "serve", "run", "--address", gcs, "--non-blocking", deployed)

    api = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 240, "the API deployed from configs/serve.yaml answers /healthz")
    created = cli(
        env, BIN / "dafnck", "auth", "keys", "create", "-r", "operator", "-n", "t", "--json"
    )
    key = json.loads(created)["secret"]
    cli(env, BIN / "dafnck", "agents", "apply", "-f", "configs/agents/review.yaml")
    answer = httpx.post(
        f"{api}/v1/tasks?wait=true",
        json={"capability": "repo.list", "input": {"root": "."}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert "hello.py" in json.dumps(answer.json()["output"])
