"""Observability on a real Ray and Valkey: one trace from an API request to the replicas,
metrics that move with the work, log lines that carry the ids, and health that sees a
killed replica and a stopped store."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import serve.app
from actors.client import Client
from actors.contract import MonitorHealth
from actors.gateway import BlockingSupervisor, SupervisorGateway
from actors.models import AgentSpec
from actors.system import ensure_supervisor
from cluster import metrics, tracing
from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.cli.llm_demo import WORKFLOW, demo_specs
from cluster.cli.obs import execution_logs
from cluster.settings import Settings
from cluster.span_store import execution_spans
from cluster.store import connect_store
from cluster.valkey import free_port, start_server
from serve.app import build_app
from tests.conftest import SCRAPER
from tests.fixtures.fake_llm import FakeLLM
from tests.integration.helpers import REPO_ROOT, wait_until
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(180)

ROUTERS = ["serve.api_health", "serve.api_metrics", "serve.api_workflows",
           "serve.api_executions", "serve.api_traces"]  # fmt: skip

OBS_AGENT = AgentSpec(
    name="observed", capabilities=["obs.work"], entrypoint="tests.fixtures.observed:work"
)
TWO_STEPS = WorkflowSpec.model_validate(
    {
        "name": "obs",
        "steps": [
            {"id": "a", "uses": "obs.work", "with": {"value": 1}},
            {"id": "b", "uses": "obs.work", "with": {"value": "${{ steps.a.output }}"}},
        ],
        "outputs": {"b": "${{ steps.b.output }}"},
    }
)


@pytest.fixture
def api(
    tenant_settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setattr(serve.app, "ROUTER_MODULES", ROUTERS)
    client.agents.apply([OBS_AGENT])
    client.workflows.define(TWO_STEPS)
    with TestClient(build_app(tenant_settings)) as http:
        yield http


def auth(
    settings: Settings, role: Role = Role.OPERATOR, tenant: str | None = None
) -> dict[str, str]:
    security = Security.from_settings(connect_store(settings), settings)
    _, secret = security.keys.create_api_key(
        tenant or settings.tenant, role, f"k{uuid.uuid4().hex[:6]}"
    )
    return {"Authorization": f"Bearer {secret}"}


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def test_one_trace_from_the_api_request_to_the_replicas(
    api: TestClient, tenant_settings: Settings
) -> None:
    headers = auth(tenant_settings)
    started = api.post("/v1/executions?wait=true", json={"workflow": "obs"}, headers=headers)
    assert started.status_code == 200, started.text
    assert started.json()["outputs"] == {"b": 3}
    execution_id = started.json()["id"]
    tracing.flush()
    expected = {"HTTP POST /v1/executions", "workflow obs", "step a", "step b",
                "task obs.work", "agent.run obs.work"}  # fmt: skip

    def complete() -> list[dict[str, Any]]:
        reply = api.get(f"/v1/executions/{execution_id}/trace", headers=headers)
        assert reply.status_code == 200, reply.text
        spans = reply.json()["spans"]
        names = {s["name"] for s in spans}
        return spans if expected <= names and len(by_name(spans, "agent.run obs.work")) == 2 else []

    spans = wait_until(complete, 30, "every span of the execution in the span store")
    assert len({s["trace_id"] for s in spans}) == 1
    ids = {s["span_id"]: s for s in spans}
    request = by_name(spans, "HTTP POST /v1/executions")[0]
    workflow = by_name(spans, "workflow obs")[0]
    assert workflow["parent_id"] == request["span_id"]
    for step in ("a", "b"):
        (step_span,) = by_name(spans, f"step {step}")
        assert step_span["parent_id"] == workflow["span_id"]
        (task,) = [
            s for s in by_name(spans, "task obs.work") if s["parent_id"] == step_span["span_id"]
        ]
        (run,) = [
            s for s in by_name(spans, "agent.run obs.work") if s["parent_id"] == task["span_id"]
        ]
        assert run["attributes"]["dafnck.step_id"] == step
        assert run["attributes"]["dafnck.execution_id"] == execution_id
        assert run["start_ms"] >= task["start_ms"] and run["end_ms"] <= task["end_ms"]
    services = {ids[s["span_id"]]["service"] for s in spans}
    assert {"dafnck-supervisor", "dafnck-agent"} <= services  # other processes than this one
    assert request["attributes"]["http.route"] == "/v1/executions"

    other = auth(tenant_settings, Role.VIEWER, tenant=f"o{uuid.uuid4().hex[:8]}")
    assert api.get(f"/v1/executions/{execution_id}/trace", headers=other).status_code == 404
    assert api.get(f"/v1/executions/{execution_id}/trace").status_code == 401


def scrape(
    api: TestClient, headers: dict[str, str]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """`/metrics`, parsed by prometheus_client's own parser: (sample name, labels) -> value."""
    reply = api.get("/metrics", headers=headers)
    assert reply.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def test_metrics_move_as_work_happens(
    api: TestClient, client: Client, tenant_settings: Settings
) -> None:
    headers = SCRAPER  # the platform's scrape credential: tenant roles never read /metrics
    ok = frozenset({("capability", "obs.work"), ("outcome", "succeeded")})
    before = scrape(api, headers)
    for value in range(3):
        assert client.tasks.run("obs.work", {"value": value}).ok
    after = scrape(api, headers)
    assert after[("dafnck_tasks_total", ok)] - before.get(("dafnck_tasks_total", ok), 0) == 3
    assert (
        after[("dafnck_task_duration_seconds_count", ok)]
        - before.get(("dafnck_task_duration_seconds_count", ok), 0)
        == 3
    )
    assert after[("dafnck_tasks_in_flight", frozenset({("capability", "obs.work")}))] == 0
    request = frozenset({("method", "GET"), ("route", "/metrics"), ("status", "200")})
    assert (
        after[("dafnck_http_requests_total", request)]
        == before.get(("dafnck_http_requests_total", request), 0) + 1
    )
    for (name, labels), _ in after.items():  # every label the API exposes is a bounded one
        if name.startswith("dafnck_"):
            assert {k for k, _ in labels} - {"le"} <= metrics.ALLOWED_LABELS, name
    # the same metric goes to Ray's export from this driver, with the same tag keys
    metrics.flush()
    assert metrics.TASKS._ray and metrics.TASKS._ray.info["tag_keys"] == ("capability", "outcome")


def test_the_trace_reaches_the_model_and_tool_calls(
    client: Client, tenant_settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "main.py").write_text('"""The entry point."""\n')
    key = tmp_path / "openai.key"
    key.write_text("sk-observability-test-key-1234\n")
    with FakeLLM() as llm:
        llm.reply(tool_calls=[("c1", "outline", {"path": str(repo / "main.py")})], tokens=(120, 30))
        answer = {"picks": [{"path": "main.py", "why": "it is the entry point"}]}
        llm.reply(json.dumps(answer), tokens=(300, 40))
        lister, guide = demo_specs(None, repo)
        assert guide.llm is not None
        cfg = guide.llm.model_copy(update={"base_url": llm.openai_url, "api_key_file": str(key)})
        client.agents.apply([lister, guide.model_copy(update={"llm": cfg})])
        client.workflows.define(REPO_ROOT / WORKFLOW)
        done = client.workflows.run("llm-demo", {"root": str(repo)}, timeout_s=120)
    assert done.status.value == "succeeded", done.error
    store = connect_store(tenant_settings)

    def spans() -> list[dict[str, Any]]:
        found = execution_spans(store.redis, tenant_settings.tenant, done.id)
        calls = [s for s in found if s["name"].startswith("chat ")]
        return found if len(calls) == 2 and by_name(found, "execute_tool outline") else []

    found = wait_until(spans, 30, "the model and tool call spans")
    ids = {s["span_id"]: s for s in found}
    for call in [s for s in found if s["name"].startswith("chat ")]:
        assert ids[call["parent_id"]]["name"].startswith("agent.run ")
        assert call["kind"] == "client" and call["service"] == "dafnck-agent"
        assert call["attributes"]["gen_ai.provider.name"] == "openai"
        assert call["attributes"]["gen_ai.request.model"] == cfg.model
        assert call["attributes"]["gen_ai.usage.input_tokens"] in (120, 300)
    (tool,) = by_name(found, "execute_tool outline")
    assert ids[tool["parent_id"]]["name"].startswith("agent.run ")


#: Labels Ray adds to every exported sample (which process and node recorded it).
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "JobId",
              "otel_scope_name", "otel_scope_schema_url", "otel_scope_version", "le"}  # fmt: skip


def ray_export() -> dict[str, list[dict[str, str]]]:
    """Ray's Prometheus export on this node: sample name -> the label sets it has."""
    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_dafnck_"):
                out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


@pytest.fixture(scope="module")
def observed(shared_client: Client) -> Client:
    """The module's shared tenant with OBS_AGENT applied and TWO_STEPS defined once: the two
    tests below look only at their own execution's metrics and log lines."""
    shared_client.agents.apply([OBS_AGENT])
    shared_client.workflows.define(TWO_STEPS)
    return shared_client


def test_ray_exports_the_actors_metrics_with_bounded_labels(observed: Client) -> None:
    assert observed.workflows.run("obs", {}).outputs == {"b": 3}
    agent = {"agent": OBS_AGENT.agent_id}
    wanted = {"ray_dafnck_pool_replicas_running": agent,  # the supervisor's reconcile
              "ray_dafnck_executions_total": {"workflow": "obs", "outcome": "succeeded"},
              "ray_dafnck_steps_total": {"workflow": "obs", "outcome": "succeeded"}}  # fmt: skip

    def exported() -> dict[str, list[dict[str, str]]]:
        found = ray_export()
        for name, labels in wanted.items():
            if not any(labels.items() <= s.items() for s in found.get(name, [])):
                return {}
        return found

    found = wait_until(exported, 45, "the supervisor's metrics in Ray's export", interval_s=2)
    for name, samples in found.items():
        for labels in samples:
            assert set(labels) - RAY_LABELS <= metrics.ALLOWED_LABELS, (name, labels)


def test_log_lines_carry_the_ids_and_no_secret(observed: Client) -> None:
    execution = observed.workflows.run("obs", {})
    assert execution.outputs == {"b": 3}

    def lines() -> list[dict[str, Any]]:
        found = execution_logs(execution.id)
        replica_steps = {r.get("step_id") for r in found if r.get("agent")}
        ended = [r for r in found if "succeeded" in r["message"] and "execution" in r["message"]]
        return found if replica_steps >= {"a", "b"} and ended else []

    records = wait_until(lines, 30, "the supervisor's and replica's log lines of both steps")
    for record in records:  # every line found carries the execution and, where known, more
        assert record["execution_id"] == execution.id
        assert record["trace_id"] and record["actor_id"]  # the span's and Ray's own ids
        assert "hunter2" not in json.dumps(record)
    replica = [r for r in records if r.get("agent")]
    for record in replica:
        assert record["tenant"] == observed.settings.tenant
        assert record["agent"] == OBS_AGENT.agent_id and record["step_id"] in ("a", "b")
        assert record["task_id"] and "password=***" in record["message"]
    supervisor = [r["message"] for r in records if not r.get("agent")]
    assert (
        "step a attempt 1 succeeded (obs.work)" in supervisor
        and "step b attempt 1 succeeded (obs.work)" in supervisor
    )
    assert {r.get("workflow") for r in records if r["message"].startswith("step ")} == {"obs"}
    assert len({r["actor_id"] for r in records}) >= 2  # lines of the supervisor and a replica


def test_health_reports_a_killed_replica(client: Client) -> None:
    client.agents.apply([OBS_AGENT])
    (name,) = [n for n in ray.util.list_named_actors(all_namespaces=True)
               if n["name"].startswith(f"{client.settings.tenant}/observed")]  # fmt: skip
    ray.kill(ray.get_actor(name["name"], namespace=name["namespace"]), no_restart=True)

    def replaced() -> dict[str, Any]:
        pool = client.health()["components"]["pools"][OBS_AGENT.agent_id]
        return pool if pool["restarts"] >= 1 and pool["status"] == "ok" else {}

    wait_until(replaced, 60, "the killed replica reported and replaced")
    health = client.health()
    assert health["components"]["store"]["status"] == "ok"
    assert health["components"]["registry"]["agents"] == 1
    assert health["components"]["ray"]["nodes"] >= 1


def test_health_reports_a_stopped_store(tenant_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    server = start_server(tmp_path / "valkey", port)
    url = f"redis://127.0.0.1:{port}/0"
    settings = tenant_settings.model_copy(update={"redis_url": url})
    try:
        wait_until(lambda: _answers(url), 10, "the test's own Valkey")
        supervisor = BlockingSupervisor(SupervisorGateway(ensure_supervisor(settings, url)))
        assert supervisor.monitor_health(MonitorHealth())["status"] == "ok"
    finally:
        server.terminate()
        server.wait(10)
    health = supervisor.monitor_health(MonitorHealth())
    assert health["status"] == "unavailable"
    assert health["components"]["store"]["status"] == "unavailable"
    assert health["components"]["registry"]["status"] == "unavailable"
    assert health["components"]["supervisor"]["status"] == "ok"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.ConnectionError:
        return False
