"""Execution routes over HTTP with a fake supervisor: each control call reaches the
supervisor's operation with the caller's identity, and its answer (or refusal) is the API's."""

from __future__ import annotations

from typing import Any

from actors.contract import CancelExecution, DecideStep
from cluster.auth.models import Role
from tests.unit.serve.conftest import Api
from workflows.spec import StepSpec, WorkflowSpec

FLOW = WorkflowSpec(name="flow", steps=[StepSpec(id="review", uses="test.echo")])


async def _started(api: Api, **body: Any) -> str:
    spec = FLOW.model_dump(mode="json", by_alias=True)
    assert (await api.http.post("/v1/workflows", json=spec, headers=api.headers())).is_success
    answer = await api.http.post(
        "/v1/executions", json={"workflow": "flow", **body}, headers=api.headers()
    )
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"/v1/executions/{answer.json()['id']}"
    return str(answer.json()["id"])


async def test_pause_resume_cancel_and_retry_move_the_execution(api: Api) -> None:
    eid = await _started(api, inputs={"x": 1})
    base, headers = f"/v1/executions/{eid}", api.headers(Role.OPERATOR)
    assert (await api.http.get(base, headers=headers)).json()["status"] == "running"
    assert (await api.http.post(f"{base}/pause", headers=headers)).json()["status"] == "paused"
    again = await api.http.post(f"{base}/pause", headers=headers)
    assert again.status_code == 409 and again.json()["error"]["type"] == "Conflict"
    assert (await api.http.post(f"{base}/resume", headers=headers)).json()["status"] == "running"
    cancelled = await api.http.post(f"{base}/cancel", json={"reason": "wrong"}, headers=headers)
    assert cancelled.json()["status"] == "cancelled"
    [cancel] = [c for c in api.supervisors["acme"].calls if isinstance(c, CancelExecution)]
    operator = await api.services.gate.authenticate(headers["Authorization"].split()[1])
    assert (cancel.reason, cancel.by) == ("wrong", operator.subject)  # from the credential
    assert (await api.http.post(f"{base}/retry", headers=headers)).json()["status"] == "running"


async def test_a_gated_step_is_approved_once_by_the_caller(api: Api) -> None:
    eid = await _started(api)
    api.supervisors["acme"].gate(eid, "review")
    url = f"/v1/executions/{eid}/steps/review/approve"
    done = await api.http.post(url, json={"reason": "looks fine"}, headers=api.headers())
    assert done.status_code == 200, done.text
    approval = done.json()["steps"]["review"]["approval"]
    assert (approval["decision"], approval["reason"]) == ("approved", "looks fine")
    assert approval["by"].startswith("key:")
    twice = await api.http.post(url, headers=api.headers())
    assert twice.status_code == 409
    rejected = await api.http.post(f"/v1/executions/{eid}/steps/nope/reject", headers=api.headers())
    assert rejected.status_code == 409
    decisions = [c for c in api.supervisors["acme"].calls if isinstance(c, DecideStep)]
    assert [(d.step, d.approved) for d in decisions] == [
        ("review", True), ("review", True), ("nope", False),
    ]  # fmt: skip


async def test_a_viewer_is_refused_and_the_execution_is_untouched(api: Api) -> None:
    eid = await _started(api)
    refused = await api.http.post(f"/v1/executions/{eid}/pause", headers=api.headers(Role.VIEWER))
    assert refused.status_code == 403
    assert "viewer" in refused.json()["error"]["message"]
    current = await api.http.get(f"/v1/executions/{eid}", headers=api.headers(Role.VIEWER))
    assert current.json()["status"] == "running"
    entries = api.services.security.audit.list("acme").entries
    assert [(e.action, e.outcome) for e in entries if e.role == "viewer"] == [
        ("executions:control", "denied")
    ]


async def test_another_tenants_execution_and_unknown_ids_are_not_found(api: Api) -> None:
    eid = await _started(api)
    other = await api.http.get(f"/v1/executions/{eid}", headers=api.headers(tenant="other"))
    assert other.status_code == 404
    paused = await api.http.post(f"/v1/executions/{eid}/pause", headers=api.headers(tenant="other"))
    assert paused.status_code == 404
    mine = await api.http.get(f"/v1/executions/{eid}", headers=api.headers())
    assert mine.json()["status"] == "running"
    bad = await api.http.get("/v1/executions/a:b", headers=api.headers())
    assert bad.status_code == 422


async def test_starting_an_unknown_workflow_is_not_found_and_audited_failed(api: Api) -> None:
    answer = await api.http.post(
        "/v1/executions", json={"workflow": "ghost"}, headers=api.headers()
    )
    assert answer.status_code == 404, answer.text
    entries = api.services.security.audit.list("acme").entries
    assert [(e.action, e.object, e.outcome) for e in entries] == [
        ("executions:control", "ghost", "failed")
    ]
