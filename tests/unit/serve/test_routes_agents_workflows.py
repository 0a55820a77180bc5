"""Agent and workflow routes over HTTP with a fake supervisor: changes reach the
supervisor's operations, listings read what it stored, errors keep their status codes."""

from __future__ import annotations

from actors.contract import ScaleAgent
from actors.models import AgentSpec
from cluster.auth.models import Role
from tests.unit.serve.conftest import Api
from workflows.spec import StepSpec, WorkflowSpec


def _echo(version: str) -> dict[str, object]:
    spec = AgentSpec(
        name="echo", version=version, capabilities=["test.echo"],
        entrypoint="tests.fixtures.agents:echo", replicas={"min": 1, "max": 4},
    )  # fmt: skip
    return spec.model_dump(mode="json")


async def test_agents_are_applied_listed_scaled_and_removed(api: Api) -> None:
    admin = api.headers()
    for version in ("1.0.0", "1.1.0"):
        made = await api.http.post("/v1/agents", json=_echo(version), headers=admin)
        assert made.status_code == 200, made.text
    listed = await api.http.get("/v1/agents", params={"version": ">=1.1"}, headers=admin)
    assert [a["spec"]["version"] for a in listed.json()["agents"]] == ["1.1.0"]
    scaled = await api.http.post("/v1/agents/echo/scale", json={"replicas": 3}, headers=admin)
    assert sorted(a["desired_replicas"] for a in scaled.json()["agents"]) == [3, 3]
    scales = [c.agent_id for c in api.supervisors["acme"].calls if isinstance(c, ScaleAgent)]
    assert sorted(scales) == ["echo@1.0.0", "echo@1.1.0"]
    status = await api.http.put(
        "/v1/agents/echo@1.0.0/status", json={"status": "draining"}, headers=admin
    )
    assert [a["status"] for a in status.json()["agents"]] == ["draining"]
    removed = await api.http.delete("/v1/agents/echo", headers=admin)
    assert sorted(removed.json()["removed"]) == ["echo@1.0.0", "echo@1.1.0"]
    gone = await api.http.get("/v1/agents/echo@1.0.0", headers=admin)
    assert gone.status_code == 404


async def test_agent_changes_need_the_right_role_and_a_known_agent(api: Api) -> None:
    refused = await api.http.post(
        "/v1/agents", json=_echo("1.0.0"), headers=api.headers(Role.VIEWER)
    )
    assert refused.status_code == 403
    listed = await api.http.get("/v1/agents", headers=api.headers(Role.VIEWER))
    assert listed.json()["agents"] == []  # the refused apply never reached the supervisor
    unknown = await api.http.post(
        "/v1/agents/ghost/scale", json={"replicas": 1}, headers=api.headers()
    )
    assert unknown.status_code == 404
    assert not any(isinstance(c, ScaleAgent) for c in api.supervisors["acme"].calls)


async def test_workflows_are_defined_as_versions_and_read_back(api: Api) -> None:
    admin = api.headers()
    spec = WorkflowSpec(name="flow", steps=[StepSpec(id="a", uses="test.echo")])
    body = spec.model_dump(mode="json", by_alias=True)
    first = await api.http.post("/v1/workflows", json=body, headers=admin)
    assert first.status_code == 201, first.text
    assert first.json() == {"name": "flow", "version": 1, "created": True}
    assert first.headers["Location"] == "/v1/workflows/flow?version=1"
    same = await api.http.post("/v1/workflows", json=body, headers=admin)
    assert same.json() == {"name": "flow", "version": 1, "created": False}
    body["description"] = "changed"
    assert (await api.http.post("/v1/workflows", json=body, headers=admin)).json()["version"] == 2
    got = await api.http.get("/v1/workflows/flow", params={"version": 1}, headers=admin)
    assert (got.json()["version"], got.json()["spec"]["description"]) == (1, "")
    versions = await api.http.get("/v1/workflows/flow/versions", headers=admin)
    assert versions.json() == {"name": "flow", "versions": [1, 2], "latest": 2}
    listing = await api.http.get("/v1/workflows", headers=admin)
    assert listing.json()["workflows"] == [{"name": "flow", "latest": 2, "versions": [1, 2]}]
    missing = await api.http.get("/v1/workflows/ghost/versions", headers=admin)
    assert missing.status_code == 404
    other = await api.http.get("/v1/workflows/flow", headers=api.headers(tenant="other"))
    assert other.status_code == 404
