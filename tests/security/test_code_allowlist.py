"""Tenants send data, never code: an operator-role key cannot make the cluster run a program
or read a secret the platform's operator did not allow.

Each path that once ran code as the platform user (a python entrypoint naming
`subprocess`/`os`, an llm agent's skill tool, an MCP stdio command) or sent a file or
variable of the platform as a bearer token (`llm.api_key_file`, `llm.api_key_env`, an A2A
agent's `auth_env`) is answered 422 naming the field; the marker the program would have made
is never created, no replica actor is started and the agent is not registered.

Real Ray, real Valkey, the API served by Serve over HTTP; the suite's allow-lists come from
tests/conftest.py (`tests.fixtures.*`, `python` MCP servers, `DAFNCK_TEST_*` variables).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from cluster.auth.models import Role
from cluster.settings import Settings
from tests.e2e.conftest import ECHO, Tenant

pytestmark = pytest.mark.timeout(180)


def llm(**fields: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "m-1", "api_key_env": "DAFNCK_TEST_KEY", **fields}


def apply(http: httpx.Client, tenant: Tenant, spec: dict[str, Any]) -> httpx.Response:
    return http.post("/v1/agents", json=spec, headers=tenant.headers(Role.OPERATOR), timeout=90)


def replicas_of(tenant: Tenant, name: str) -> list[str]:
    """Every replica actor the agent ever had, dead ones included (the GCS keeps them): a
    replica started to check the spec and stopped again is still seen here."""
    prefix = f"{tenant.name}/{name}@"
    actors = ray._private.state.actors().values()
    return [str(a["Name"]) for a in actors if str(a.get("Name") or "").startswith(prefix)]


def assert_refused(
    http: httpx.Client, tenant: Tenant, spec: dict[str, Any], field: str
) -> list[str]:
    """The spec is answered 422 naming `field`; no replica runs and nothing is registered."""
    answer = apply(http, tenant, spec)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    problems: list[str] = error["problems"]
    assert error["type"] == "SpecInvalid", error
    assert any(p.startswith(f"{field}: ") for p in problems), problems
    assert replicas_of(tenant, spec["name"]) == []
    listed = http.get("/v1/agents", headers=tenant.headers(Role.OPERATOR)).json()["agents"]
    assert spec["name"] not in {a["spec"]["name"] for a in listed}
    return problems


def name() -> str:
    return f"evil-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    ("entrypoint", "config"),
    [
        ("subprocess:Popen", {"args": ["touch", "{marker}"]}),
        ("subprocess:run", {"args": ["touch", "{marker}"]}),  # waits for the program
        ("os:system", {"command": "touch {marker}"}),
    ],
)
def test_a_python_entrypoint_outside_the_list_runs_nothing(
    http: httpx.Client,
    tenants: tuple[Tenant, Tenant],
    tmp_path: Path,
    entrypoint: str,
    config: dict[str, Any],
) -> None:
    marker = tmp_path / "pwned"
    filled = {
        k: [str(a).format(marker=marker) for a in v] if isinstance(v, list) else
        str(v).format(marker=marker)
        for k, v in config.items()
    }  # fmt: skip
    spec = {"name": name(), "capabilities": ["x.run"], "entrypoint": entrypoint, "config": filled}
    problems = assert_refused(http, tenants[0], spec, "entrypoint")
    assert "agent_entrypoints" in " ".join(problems)
    assert not marker.exists()


def test_an_allowed_entrypoint_still_serves(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    """The control: the same route and key apply an agent the platform lists."""
    answer = apply(http, tenants[0], {**ECHO, "name": "allowed-echo"})
    assert answer.status_code == 200, answer.text
    assert replicas_of(tenants[0], "allowed-echo")


def test_an_llm_tool_skill_outside_the_list_is_refused(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    tools = [{"skill": "tests.fixtures.llm_notes:record_note"}, {"skill": "subprocess:getoutput"}]
    spec = {"name": name(), "kind": "llm", "capabilities": ["x.chat"], "llm": llm(tools=tools)}
    problems = assert_refused(http, tenants[0], spec, "llm.tools[1].skill")
    assert not any(p.startswith("llm.tools[0]") for p in problems), problems


def test_an_mcp_command_outside_the_list_starts_nothing(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], tmp_path: Path
) -> None:
    marker = tmp_path / "mcp-ran"
    tools = [{"mcp": {"url": "http://127.0.0.1:9/mcp"}},  # HTTP MCP needs no listing
             {"mcp": {"command": ["touch", str(marker)]}},
             {"mcp": {"command": ["python", "-V"], "env": {"PYTHONSTARTUP": str(marker)}}}]  # fmt: skip
    spec = {"name": name(), "kind": "llm", "capabilities": ["x.chat"], "llm": llm(tools=tools)}
    problems = assert_refused(http, tenants[0], spec, "llm.tools[1].mcp.command")
    assert any(p.startswith("llm.tools[2].mcp.env: ") for p in problems), problems
    assert not any(p.startswith("llm.tools[0]") for p in problems), problems
    assert not marker.exists()


@pytest.mark.parametrize("which", ["/etc/passwd", "jwt_keys", "../jwt_keys.json"])
def test_an_api_key_file_outside_the_secrets_directory_is_refused(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], e2e_settings: Settings, which: str
) -> None:
    path = str(e2e_settings.state_dir / "jwt_keys.json") if which == "jwt_keys" else which
    spec = {"name": name(), "kind": "llm", "capabilities": ["x.chat"],
            "llm": llm(api_key_env=None, api_key_file=path)}  # fmt: skip
    problems = assert_refused(http, tenants[0], spec, "llm.api_key_file")
    assert "secrets directory" in " ".join(problems)


@pytest.mark.parametrize("variable", ["HOME", "RAY_AUTH_TOKEN", "DAFNCK_JWT_SECRET"])
def test_an_api_key_env_outside_the_prefix_is_refused(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], variable: str
) -> None:
    spec = {"name": name(), "kind": "llm", "capabilities": ["x.chat"],
            "llm": llm(api_key_env=variable)}  # fmt: skip
    assert_refused(http, tenants[0], spec, "llm.api_key_env")


def test_an_a2a_auth_env_outside_the_prefix_is_refused(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    spec = {
        "name": name(),
        "capabilities": ["x.remote"],
        "entrypoint": "actors.a2a_remote:A2ARemoteAgent",
        "config": {"url": "http://127.0.0.1:9/agent", "auth_env": "HOME"},
    }
    assert_refused(http, tenants[0], spec, "config.auth_env")


def test_every_refused_field_is_reported_together(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    tools = [{"skill": "os:system"}, {"mcp": {"command": ["sh", "-c", "id"]}}]
    spec = {"name": name(), "kind": "llm", "capabilities": ["x.chat"],
            "llm": llm(api_key_env=None, api_key_file="/etc/passwd", tools=tools)}  # fmt: skip
    problems = assert_refused(http, tenants[0], spec, "llm.api_key_file")
    fields = [p.split(": ", 1)[0] for p in problems]
    assert {"llm.api_key_file", "llm.tools[0].skill", "llm.tools[1].mcp.command"} <= set(fields)
