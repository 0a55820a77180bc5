"""The SDKs only some agents need are extras: a spec that needs a missing one is refused
with the `pip install` to run, and the API leaves out the A2A endpoint without `[a2a]`.

A module is made missing the way Python itself records one: `None` in `sys.modules`."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from actors.kinds import load_agent
from actors.models import AgentSpec
from cluster.errors import SpecInvalid

REPO = Path(__file__).resolve().parents[3]


def llm_spec() -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "name": "guide",
            "kind": "llm",
            "capabilities": ["repo.guide"],
            "llm": {"provider": "openai", "model": "gpt-4o-mini"},
        }
    )


def a2a_spec() -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "name": "translator",
            "capabilities": ["text.translate"],
            "entrypoint": "actors.a2a_remote:A2ARemoteAgent",
            "config": {"url": "http://127.0.0.1:9/agent"},
        }
    )


def test_an_llm_agent_without_the_llm_extra_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(SpecInvalid) as caught:
        load_agent(llm_spec())
    assert "pip install 'dafnck-machine[llm]'" in caught.value.message
    assert "openai" in caught.value.message


def test_an_a2a_agent_without_the_a2a_extra_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Submodules already imported (by an earlier test) would be found without their parent.
    for name in [m for m in sys.modules if m == "a2a" or m.startswith("a2a.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("actors.a2a")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "a2a", None)
    with pytest.raises(SpecInvalid) as caught:
        load_agent(a2a_spec())
    assert "pip install 'dafnck-machine[a2a]'" in caught.value.message


def test_the_api_leaves_out_the_a2a_endpoint_without_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import serve.app
    from cluster.settings import load_settings

    monkeypatch.setattr(serve.app, "ROUTER_MODULES", ["serve.api_health", "serve.api_a2a"])
    with_a2a = set(serve.app.build_app(load_settings()).openapi()["paths"])
    monkeypatch.setitem(sys.modules, "a2a", None)
    without = set(serve.app.build_app(load_settings()).openapi()["paths"])
    a2a_paths = with_a2a - without
    assert a2a_paths and all("a2a" in p for p in a2a_paths), a2a_paths


def test_the_sdks_are_extras_and_dev_has_them_all() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for sdk in ("openai", "anthropic", "mcp", "a2a-sdk"):
        assert sdk not in core
    extras = project["optional-dependencies"]
    assert {"llm", "a2a", "all", "dev"} <= set(extras)
    assert "dafnck-machine[llm,a2a]" in extras["all"]
    assert "dafnck-machine[all]" in extras["dev"]
