"""The workflow and execution API over the ASGI app on a real Ray and Valkey: define, run,
control, approve, page events; roles and tenants. Fixtures here are shared by the other
`test_api_*` modules."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import serve.app
from actors.client import Client
from actors.models import AgentSpec
from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.settings import Settings
from cluster.store import connect_store
from serve.app import build_app
from tests.integration.conftest import kill_tenant

pytestmark = pytest.mark.timeout(120)

ROUTERS = [
    "serve.api_health",
    "serve.api_workflows",
    "serve.api_executions",
    "serve.api_streams",
    "serve.api_messages",
    "serve.api_data",
]

Keys = Callable[..., dict[str, str]]


@pytest.fixture
def api(tenant_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(serve.app, "ROUTER_MODULES", ROUTERS)
    with TestClient(build_app(tenant_settings)) as client:
        yield client


@pytest.fixture
def keys(tenant_settings: Settings) -> Iterator[Keys]:
    """`keys(role)` -> Authorization headers of a new API key (of another tenant if given)."""
    store = connect_store(tenant_settings)
    security = Security.from_settings(store, tenant_settings)
    others: list[str] = []

    def make(role: Role = Role.ADMIN, tenant: str | None = None) -> dict[str, str]:
        if tenant is not None:
            others.append(tenant)
        _, secret = security.keys.create_api_key(
            tenant or tenant_settings.tenant, role, f"{role}-{uuid.uuid4().hex[:6]}"
        )
        return {"Authorization": f"Bearer {secret}"}

    yield make
    for tenant in others:
        kill_tenant(tenant)
    store.close()


@pytest.fixture
def stepper(tenant_settings: Settings) -> Client:
    """The tenant's client with a `test.step` agent (one replica) applied."""
    from actors.client import connect

    client = connect(settings=tenant_settings)
    client.agents.apply(
        AgentSpec(
            name="stepper",
            capabilities=["test.step"],
            entrypoint="tests.fixtures.agents:step",
            replicas={"min": 1, "max": 2},
            max_concurrency=16,
        )
    )
    return client


def chain(name: str, length: int, seconds: float) -> dict[str, Any]:
    """A workflow body as people write it (`with`), each step adding one to the previous."""
    steps: list[dict[str, Any]] = [
        {"id": "s0", "uses": "test.step", "with": {"value": 0, "seconds": seconds}}
    ]
    for i in range(1, length):
        value = f"${{{{ steps.s{i - 1}.output }}}}"
        steps.append(
            {"id": f"s{i}", "uses": "test.step", "with": {"value": value, "seconds": seconds}}
        )
    return {
        "name": name,
        "steps": steps,
        "outputs": {"last": f"${{{{ steps.s{length - 1}.output }}}}"},
    }


def wait_status(api: TestClient, headers: dict[str, str], eid: str, *wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body = api.get(f"/v1/executions/{eid}", headers=headers).json()
        if body["status"] in wanted:
            return body  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{eid} stayed {body['status']}, wanted {wanted}"
        time.sleep(0.05)


def all_events(api: TestClient, headers: dict[str, str], eid: str) -> list[dict[str, Any]]:
    page = api.get(f"/v1/executions/{eid}/events?limit=1000", headers=headers).json()
    assert page["next_cursor"] is None
    return page["events"]  # type: ignore[no-any-return]


def test_define_is_validated_with_every_problem_and_versions_are_kept(
    api: TestClient, keys: Keys, stepper: Client
) -> None:
    admin = keys()
    bad = {"name": "bad", "steps": [
        {"id": "a", "uses": "test.stepp"}, {"id": "b", "uses": "test.step", "needs": ["zz"]}]}  # fmt: skip
    answer = api.post("/v1/workflows", json=bad, headers=admin)
    assert answer.status_code == 422
    text = answer.json()["error"]["message"]
    assert "test.stepp" in text and "zz" in text
    shape = api.post("/v1/workflows", json={"name": "Bad!", "steps": [], "x": 1}, headers=admin)
    assert shape.status_code == 422
    fields = {p["field"] for p in shape.json()["error"]["problems"]}
    assert {"body.name", "body.steps", "body.x"} <= fields

    first = api.post("/v1/workflows", json=chain("chain", 2, 0), headers=admin)
    assert first.status_code == 201 and first.json()["version"] == 1
    assert (
        api.post("/v1/workflows", json=chain("chain", 3, 0), headers=admin).json()["version"] == 2
    )
    listed = api.get("/v1/workflows", headers=keys(Role.VIEWER)).json()["workflows"]
    assert listed == [{"name": "chain", "latest": 2, "versions": [1, 2]}]
    latest = api.get("/v1/workflows/chain", headers=admin).json()
    assert latest["version"] == 2 and len(latest["spec"]["steps"]) == 3
    assert "with" in latest["spec"]["steps"][0]
    old = api.get("/v1/workflows/chain?version=1", headers=admin).json()
    assert len(old["spec"]["steps"]) == 2
    assert api.get("/v1/workflows/chain/versions", headers=admin).json()["versions"] == [1, 2]
    assert api.get("/v1/workflows/nope", headers=admin).status_code == 404
    assert api.get("/v1/workflows/chain?version=9", headers=admin).status_code == 404
    assert (
        api.post("/v1/workflows", json=chain("x", 1, 0), headers=keys(Role.VIEWER)).status_code
        == 403
    )
    assert (
        api.get(
            "/v1/workflows/chain", headers=keys(tenant="other" + uuid.uuid4().hex[:6])
        ).status_code
        == 404
    )


def test_run_control_approve_and_page_events(api: TestClient, keys: Keys, stepper: Client) -> None:
    admin, viewer = keys(), keys(Role.VIEWER)
    assert api.post("/v1/workflows", json=chain("slow", 3, 0.4), headers=admin).status_code == 201

    started = api.post("/v1/executions", json={"workflow": "slow"}, headers=admin)
    assert started.status_code == 202
    eid = started.json()["id"]
    assert started.headers["location"] == f"/v1/executions/{eid}"
    wait_status(api, admin, eid, "running")
    paused = api.post(f"/v1/executions/{eid}/pause", headers=admin)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    again = api.post(f"/v1/executions/{eid}/pause", headers=admin)
    assert again.status_code == 409 and again.json()["error"]["type"] == "Conflict"
    assert api.post(f"/v1/executions/{eid}/resume", headers=viewer).status_code == 403
    assert api.post(f"/v1/executions/{eid}/resume", headers=admin).json()["status"] == "running"
    done = wait_status(api, admin, eid, "succeeded")
    assert done["outputs"] == {"last": 3}
    assert api.post(f"/v1/executions/{eid}/resume", headers=admin).status_code == 409
    assert api.post(f"/v1/executions/{eid}/retry", headers=admin).status_code == 409

    # events: pages of two, joined, are the whole log in order
    events, cursor = [], "0-0"
    while cursor:
        page = api.get(
            f"/v1/executions/{eid}/events?limit=2&cursor={cursor}", headers=viewer
        ).json()
        events += page["events"]
        cursor = page["next_cursor"]
    assert events == all_events(api, viewer, eid)
    assert events[0]["event"]["type"] == "execution.started"
    assert [e["event"]["step"] for e in events if e["event"]["type"] == "step.succeeded"] == [
        "s0",
        "s1",
        "s2",
    ]
    assert api.get(f"/v1/executions/{eid}/events?cursor=nope", headers=admin).status_code == 422

    cancelled = api.post("/v1/executions", json={"workflow": "slow"}, headers=admin).json()["id"]
    wait_status(api, admin, cancelled, "running")
    stop = api.post(f"/v1/executions/{cancelled}/cancel", json={"reason": "enough"}, headers=admin)
    assert stop.status_code == 200
    assert wait_status(api, admin, cancelled, "cancelled")["error"]["message"] == "enough"
    assert api.post(f"/v1/executions/{cancelled}/retry", headers=admin).status_code == 200
    assert wait_status(api, admin, cancelled, "succeeded")["outputs"] == {"last": 3}

    waited = api.post(
        "/v1/executions?wait=true", json={"workflow": "slow", "version": 1}, headers=admin
    )
    assert waited.status_code == 200 and waited.json()["status"] == "succeeded"
    listed = api.get("/v1/executions?status=succeeded", headers=viewer).json()["executions"]
    assert {e["id"] for e in listed} == {eid, cancelled, waited.json()["id"]}
    assert api.get("/v1/executions?status=bogus", headers=viewer).status_code == 422
    assert api.post("/v1/executions", json={"workflow": "slow"}, headers=viewer).status_code == 403
    assert api.post("/v1/executions", json={"workflow": "nope"}, headers=admin).status_code == 404

    other = keys(Role.ADMIN, tenant="other" + uuid.uuid4().hex[:6])
    assert api.get(f"/v1/executions/{eid}", headers=other).status_code == 404
    assert api.post(f"/v1/executions/{eid}/pause", headers=other).status_code == 404
    assert api.get(f"/v1/executions/{eid}/events", headers=other).status_code == 404
    check_approval_records_who_and_why(api, keys)  # same tenant and agent: no second setup


def check_approval_records_who_and_why(api: TestClient, keys: Keys) -> None:
    admin = keys()
    gated = {
        "name": "gated",
        "steps": [{"id": "go", "uses": "test.step", "approval": {"prompt": "go?"}}],
    }
    assert api.post("/v1/workflows", json=gated, headers=admin).status_code == 201
    eid = api.post("/v1/executions", json={"workflow": "gated"}, headers=admin).json()["id"]
    wait_status(api, admin, eid, "waiting_approval")
    operator = keys(Role.OPERATOR)
    assert (
        api.post(f"/v1/executions/{eid}/steps/go/approve", headers=keys(Role.VIEWER)).status_code
        == 403
    )
    assert api.post(f"/v1/executions/{eid}/steps/nope/approve", headers=operator).status_code == 409
    answer = api.post(
        f"/v1/executions/{eid}/steps/go/approve", json={"reason": "looks right"}, headers=operator
    )
    assert answer.status_code == 200
    done = wait_status(api, admin, eid, "succeeded")
    approval = done["steps"]["go"]["approval"]
    subject = api.app.state.services.security.authenticate(operator["Authorization"][7:]).subject  # type: ignore[attr-defined]
    assert (approval["decision"], approval["by"], approval["reason"]) == (
        "approved",
        subject,
        "looks right",
    )
    assert api.post(f"/v1/executions/{eid}/steps/go/reject", headers=operator).status_code == 409

    rejected = api.post("/v1/executions", json={"workflow": "gated"}, headers=admin).json()["id"]
    wait_status(api, admin, rejected, "waiting_approval")
    api.post(f"/v1/executions/{rejected}/steps/go/reject", json={"reason": "no"}, headers=admin)
    failed = wait_status(api, admin, rejected, "failed", "succeeded", "cancelled")
    assert failed["steps"]["go"]["approval"]["decision"] == "rejected"
