"""Observability on a real Ray and Valkey: one trace from an API request to the replicas,
metrics that move with the work, log lines that carry the ids, and health that sees a
killed replica and a stopped store."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import serve.app
from actors.client import Client
from actors.models import AgentSpec
from cluster import metrics, tracing
from cluster.security import Security
from cluster.security_models import Role
from cluster.settings import Settings
from cluster.store import connect_store
from serve.app import build_app
from tests.integration.helpers import wait_until
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


def auth(settings: Settings, role: Role = Role.OPERATOR, tenant: str | None = None) -> dict[str, str]:
    security = Security.from_settings(connect_store(settings), settings)
    _, secret = security.keys.create_api_key(tenant or settings.tenant, role, f"k{uuid.uuid4().hex[:6]}")
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
        (task,) = [s for s in by_name(spans, "task obs.work") if s["parent_id"] == step_span["span_id"]]
        (run,) = [s for s in by_name(spans, "agent.run obs.work") if s["parent_id"] == task["span_id"]]
        assert run["attributes"]["dafnck.step_id"] == step
        assert run["attributes"]["dafnck.execution_id"] == execution_id
        assert run["start_ms"] >= task["start_ms"] and run["end_ms"] <= task["end_ms"]
    services = {ids[s["span_id"]]["service"] for s in spans}
    assert {"dafnck-supervisor", "dafnck-agent"} <= services  # other processes than this one
    assert request["attributes"]["http.route"] == "/v1/executions"

    other = auth(tenant_settings, Role.VIEWER, tenant=f"o{uuid.uuid4().hex[:8]}")
    assert api.get(f"/v1/executions/{execution_id}/trace", headers=other).status_code == 404
    assert api.get(f"/v1/executions/{execution_id}/trace").status_code == 401
