"""Admission: a spec naming code or secrets the operator did not allow is refused with every
field named, before anything is imported or started (supervisor and replica alike)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from actors.admission import code_problems
from actors.kinds import build_skills, load_agent
from actors.llm_tools import ToolBox
from actors.models import AgentSpec, MCPServer, ToolRef
from actors.skills import load_entrypoint
from actors.supervisor import Supervisor
from cluster.allowlist import CodePolicy
from cluster.errors import SpecInvalid
from tests.unit.actors.fakes import FakeLauncher

POLICY = CodePolicy(
    agent_entrypoints=("tests.fixtures.*",),
    tool_skills=("tests.fixtures.*",),
    secrets_dir=Path("/nonexistent/secrets"),
    secret_env_prefix="DAFNCK_SECRET_",
    secret_env_allow=("OPENAI_API_KEY",),
)


def spec(**fields: Any) -> AgentSpec:
    return AgentSpec.model_validate({"name": "a", "capabilities": ["x.y"], **fields})


def llm(**fields: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", **fields}


def fields_of(problems: list[str]) -> list[str]:
    return [p.split(":", 1)[0] for p in problems]


def test_every_refused_field_is_named_together() -> None:
    bad = spec(
        kind="llm",
        llm=llm(
            api_key_file="/etc/passwd",
            tools=[
                {"skill": "tests.fixtures.agents:echo"},
                {"skill": "os:system"},
                {"mcp": {"command": ["touch", "/tmp/x"], "env": {"LD_PRELOAD": "/tmp/x.so"}}},
                {"mcp": {"url": "http://127.0.0.1:9/mcp"}},  # HTTP MCP needs no listing
            ],
        ),
    )
    assert fields_of(code_problems(bad, POLICY)) == [
        "llm.api_key_file",
        "llm.tools[1].skill",
        "llm.tools[2].mcp.command",
        "llm.tools[2].mcp.env",
    ]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"entrypoint": "subprocess:Popen"}, "entrypoint"),
        ({"entrypoint": "os:system"}, "entrypoint"),
        ({"entrypoint": "tests.fixtures.agents:echo", "config": {"auth_env": "HOME"}},
         "config.auth_env"),
        ({"entrypoint": "tests.fixtures.agents:echo", "config": {"token_file": "/etc/shadow"}},
         "config.token_file"),
        ({"entrypoint": "tests.fixtures.agents:echo", "config": {"auth_env": ["HOME"]}},
         "config.auth_env"),
        ({"kind": "llm", "llm": llm(api_key_env="RAY_AUTH_TOKEN")}, "llm.api_key_env"),
    ],
)  # fmt: skip
def test_each_path_to_code_or_secrets_is_refused(fields: dict[str, Any], field: str) -> None:
    assert fields_of(code_problems(spec(**fields), POLICY)) == [field]


def test_allowed_specs_pass() -> None:
    ok = spec(entrypoint="tests.fixtures.agents:echo", config={"auth_env": "DAFNCK_SECRET_A"})
    assert code_problems(ok, POLICY) == []
    ok_llm = spec(kind="llm", llm=llm(api_key_env="OPENAI_API_KEY",
                                      tools=[{"skill": "tests.fixtures.llm_notes:record_note"}]))  # fmt: skip
    assert code_problems(ok_llm, POLICY) == []


def test_the_replica_imports_nothing_it_refuses() -> None:
    """`this` prints on import: a stdlib module no test imports, so its absence is telling."""
    assert "this" not in sys.modules
    with pytest.raises(SpecInvalid) as caught:
        load_agent(spec(entrypoint="this:s"))  # this process's settings: the suite's lists
    assert fields_of(list(caught.value.problems)) == ["entrypoint"]
    with pytest.raises(ValueError, match="not in the platform's tool_skills"):
        load_entrypoint("this:s", POLICY, "tool_skills")
    assert "this" not in sys.modules


def test_an_allowed_module_does_not_lend_what_it_imported() -> None:
    """tests.fixtures.agents imports `skill` and `os`: neither is code the list allows."""
    with pytest.raises(SpecInvalid, match=r"is actors.skills:skill, which is not in the platf"):
        build_skills(spec(entrypoint="tests.fixtures.agents:skill"))
    with pytest.raises(SpecInvalid, match=r"names neither a function nor a class"):
        build_skills(spec(entrypoint="tests.fixtures.agents:os"))


def test_the_replicas_toolbox_starts_no_refused_mcp_program(tmp_path: Path) -> None:
    marker = tmp_path / "mcp-ran"
    refs = [ToolRef(mcp=MCPServer(command=["touch", str(marker)]))]
    with pytest.raises(SpecInvalid) as caught:
        ToolBox(refs, policy=POLICY)
    assert fields_of(list(caught.value.problems)) == ["llm.tools[0].mcp.command"]
    assert not marker.exists()


async def test_the_supervisor_starts_no_replica_for_a_refused_spec(store: Any) -> None:
    from actors.registry import AgentRegistry

    launcher = FakeLauncher()
    supervisor = Supervisor(AgentRegistry(store), launcher, policy=POLICY)
    with pytest.raises(SpecInvalid) as caught:
        await supervisor.create_agent(spec(entrypoint="subprocess:Popen"))
    assert fields_of(list(caught.value.problems)) == ["entrypoint"]
    assert launcher.started == [] and supervisor.registry.all() == []


async def test_a_stored_spec_the_lists_now_refuse_is_reported_on_restore(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from actors.models import AgentRecord
    from actors.registry import AgentRegistry

    registry = AgentRegistry(store)
    registry.register_agent(
        AgentRecord(spec=spec(entrypoint="os:system"), skills={}, desired_replicas=0)
    )
    with caplog.at_level("WARNING", logger="actors.supervisor"):
        await Supervisor(registry, FakeLauncher(), policy=POLICY).restore()
    assert "agent a@1.0.0 names code or secrets the platform does not allow" in caplog.text
    assert "entrypoint: 'os:system' is not in the platform's agent_entrypoints" in caplog.text


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[3] / "configs" / "agents").rglob("*.yaml")), ids=str
)
def test_the_shipped_agents_pass_the_default_lists(path: Path, tmp_path: Path) -> None:
    """`dafnck demo` and the example configs work on a platform with default settings."""
    from actors.client import load_agent_specs
    from cluster.settings import Settings

    defaults = CodePolicy.from_settings(Settings.model_construct(state_dir=tmp_path))
    specs = load_agent_specs(path)
    assert specs
    assert [code_problems(s, defaults) for s in specs] == [[] for _ in specs]
