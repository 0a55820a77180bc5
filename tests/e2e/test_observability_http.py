"""Observability through Serve over real HTTP: a caller's `traceparent` header parents the
API's request span, and the execution's trace (API replica, supervisor, agent replica)
comes back from `/v1/executions/{id}/trace`; every response names its request id."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from cluster.auth.models import Role
from tests.e2e.conftest import Tenant

pytestmark = pytest.mark.timeout(180)


def test_the_callers_trace_runs_through_serve_to_the_replica(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    tenant, other = tenants
    admin = tenant.headers(Role.ADMIN)
    name = f"traced-{uuid.uuid4().hex[:6]}"
    agent = {"name": name, "capabilities": ["obs.work"],
             "entrypoint": "tests.fixtures.observed:work"}  # fmt: skip
    assert http.post("/v1/agents", json=agent, headers=admin).status_code == 200
    workflow = {"name": name, "steps": [{"id": "only", "uses": "obs.work"}]}
    assert http.post("/v1/workflows", json=workflow, headers=admin).status_code == 201
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    started = http.post(
        "/v1/executions?wait=true",
        json={"workflow": name},
        headers={**admin, "traceparent": f"00-{trace_id}-{caller_span}-01"},
    )
    assert started.status_code == 200, started.text
    assert started.headers["x-request-id"]
    execution_id = started.json()["id"]
    viewer = tenant.headers(Role.VIEWER)

    deadline, spans = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        spans = http.get(f"/v1/executions/{execution_id}/trace", headers=viewer).json()["spans"]
        if any(s["name"].startswith("agent.run") for s in spans):
            break
        time.sleep(0.5)
    by_name = {s["name"]: s for s in spans}
    request = by_name["HTTP POST /v1/executions"]
    assert request["trace_id"] == trace_id and request["parent_id"] == caller_span
    assert request["service"] == "dafnck-api"
    assert request["attributes"]["dafnck.request_id"] == started.headers["x-server-request-id"]
    assert by_name[f"workflow {name}"]["parent_id"] == request["span_id"]
    assert by_name["agent.run obs.work"]["service"] == "dafnck-agent"
    assert {s["trace_id"] for s in spans} == {trace_id}
    foreign = http.get(f"/v1/executions/{execution_id}/trace", headers=other.headers(Role.ADMIN))
    assert foreign.status_code == 404
