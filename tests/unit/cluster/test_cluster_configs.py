"""The cluster configs in `configs/` are valid where they are used: the `ray up` YAML against
the schema shipped inside the ray package, the KubeRay manifests as YAML of the right kinds
(the RayService serving configs/serve.yaml's application), and what `dafnck submit` sends."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from cluster.cli.jobs import JobSubmission, load_runtime_env, workflow_name
from cluster.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_the_ray_up_config_matches_rays_own_schema_and_checks() -> None:
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = load(CONFIGS / "cluster" / "ray-cluster.yaml")
    jsonschema.validate(config, schema)
    validate_config(config)
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    for commands in (head, workers):
        assert "RAY_AUTH_MODE=token" in commands and "DAFNCK_REDIS_URL=" in commands
    assert "RAY_REDIS_ADDRESS=" in head  # GCS fault tolerance on the head
    assert {"ray.head.default", config["head_node_type"]} <= set(config["available_node_types"])


def test_a_broken_ray_up_config_fails_the_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = load(CONFIGS / "cluster" / "ray-cluster.yaml")
    config["available_node_types"]["ray.worker.cpu"]["min_worker"] = 1  # a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_kuberay_manifests_have_their_kinds_fault_tolerance_and_token_auth() -> None:
    kinds = {p.name: load(p) for p in (CONFIGS / "kuberay").glob("*.yaml")}
    assert {n: d["kind"] for n, d in kinds.items()} == {
        "raycluster.yaml": "RayCluster",
        "rayservice.yaml": "RayService",
        "rayjob.yaml": "RayJob",
    }
    assert all(d["apiVersion"] == "ray.io/v1" for d in kinds.values())
    cluster = kinds["raycluster.yaml"]["spec"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
    head_env = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in head_env
    job = kinds["rayjob.yaml"]["spec"]
    assert job["metadata"] == {"tenant": "default", "workflow": "review"}
    for part in shlex.split(job["entrypoint"]):
        if part.startswith("configs/"):
            assert (REPO / part).exists(), part


def test_the_rayservice_serves_the_application_of_serve_yaml() -> None:
    service = load(CONFIGS / "kuberay" / "rayservice.yaml")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve = load(CONFIGS / "serve.yaml")
    assert embedded["applications"] == serve["applications"]
    assert embedded["http_options"]["host"] == "0.0.0.0"  # reachable from the Service


def test_runtime_env_and_rayignore_ship_the_code_not_the_venv() -> None:
    env = load_runtime_env(CONFIGS / "runtime_env.yaml", "acme")
    assert env["working_dir"] == "."
    assert env["env_vars"]["DAFNCK_TENANT"] == "acme"
    ignored = (REPO / ".rayignore").read_text().split()
    assert {".venv/", ".git/"} <= set(ignored)


def test_a_submission_runs_dafnck_run_with_its_inputs_and_names_the_workflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = JobSubmission(
        workflow_file="configs/workflows/review.yaml",
        inputs=["root=/data/my repo", "top=3"],
        agents=["configs/agents/review.yaml"],
        submission_id="nightly-1",
        tenant="acme",
    )
    assert shlex.split(job.entrypoint()) == [
        "dafnck", "agents", "apply", "-f", "configs/agents/review.yaml", "&&",
        "dafnck", "run", "configs/workflows/review.yaml",
        "--input", "root=/data/my repo", "--input", "top=3",
    ]  # fmt: skip
    monkeypatch.chdir(REPO)  # the workflow file is a path inside the working dir
    assert job.metadata() == {
        "tenant": "acme",
        "workflow": "review",
        "submitted_by": "dafnck submit",
    }


def test_bad_submission_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no workflow with a name"):
        workflow_name(_write(tmp_path / "w.yaml", "steps: []\n"))
    with pytest.raises(ConfigError, match="cannot read the workflow"):
        workflow_name(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="a runtime_env is a mapping"):
        load_runtime_env(_write(tmp_path / "env.yaml", "- working_dir\n"), "t")
    with pytest.raises(ValueError, match="submission_id"):
        JobSubmission(workflow_file="w.yaml", submission_id="has spaces")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_llm_agent_beside_its_model_selects_the_gpu_nodes_and_the_local_proxy() -> None:
    from actors.models import AgentSpec

    spec = AgentSpec.model_validate(load(CONFIGS / "cluster" / "llm-agent-beside-model.yaml"))
    assert spec.kind == "llm" and spec.llm is not None
    assert spec.resources.node_labels == {"dafnck.io/pool": "gpu"}
    assert spec.llm.base_url == "http://localhost:8000/v1"
    gpu_nodes = load(CONFIGS / "cluster" / "ray-cluster.yaml")["available_node_types"][
        "ray.worker.gpu"
    ]
    assert gpu_nodes["labels"] == spec.resources.node_labels
