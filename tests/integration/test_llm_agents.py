"""LLM agents in real pools on the session Ray, their model a local server speaking each
provider's wire protocol: the LLM demo's workflow (a python agent, then an llm agent with a
python tool and JSON output); delegation to a python agent's pool, provider errors retried
by the SDK alone and a missing key refused when the agent is created (one tenant, to spare
a supervisor start); and one task's tokens followed over SSE through the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from actors.client import Client
from actors.messages import DomainEvent
from actors.models import AgentSpec
from cluster.cli.llm_demo import WORKFLOW, demo_specs
from cluster.errors import SpecInvalid
from cluster.settings import Settings
from tests.fixtures.fake_llm import FakeLLM
from tests.integration import test_api_executions as shared
from tests.integration.helpers import REPO_ROOT, echo_spec
from tests.integration.test_api_executions import Keys

keys = shared.keys  # fixture: API keys of the test's tenant


@pytest.fixture
def api(tenant_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API's ASGI app with the routes these tests use."""
    import serve.app

    routers = ["serve.api_health", "serve.api_agents", "serve.api_tasks", "serve.api_streams"]
    monkeypatch.setattr(serve.app, "ROUTER_MODULES", routers)
    with TestClient(serve.app.build_app(tenant_settings)) as client:
        yield client


pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "openai.key"
    path.write_text("sk-integration-test-key-1234\n")
    return str(path)


def pointed_at(spec: AgentSpec, llm: FakeLLM, key_file: str, **fields: Any) -> AgentSpec:
    assert spec.llm is not None
    cfg = spec.llm.model_copy(
        update={"base_url": llm.openai_url, "api_key_file": key_file, **fields}
    )
    return spec.model_copy(update={"llm": cfg})


def tool_results(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["body"]["messages"] if m["role"] == "tool"]


def test_the_llm_demo_runs_a_python_agent_then_an_llm_agent_with_tools(
    client: Client, llm: FakeLLM, key_file: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "main.py").write_text(
        '"""The entry point."""\n\ndef main() -> None:\n    """Start."""\n'
    )
    (repo / "util.py").write_text("def helper() -> int:\n    return 1\n")
    answer = {"picks": [{"path": "main.py", "why": "it is the entry point"}]}
    llm.reply(tool_calls=[("c1", "outline", {"path": str(repo / "main.py")}),
                          ("c2", "outline", {"path": str(repo / "util.py")})], tokens=(120, 30))  # fmt: skip
    llm.reply(json.dumps(answer), tokens=(300, 40))
    lister, guide = demo_specs(None, repo)
    client.agents.apply([lister, pointed_at(guide, llm, key_file)])
    client.workflows.define(REPO_ROOT / WORKFLOW)

    done = client.workflows.run("llm-demo", {"root": str(repo)}, timeout_s=120)

    assert done.status.value == "succeeded", done.error
    assert done.outputs is not None
    assert done.outputs["picks"] == answer["picks"]
    assert done.outputs["usage"]["input_tokens"] == 420
    assert done.outputs["usage"]["output_tokens"] == 70
    assert len(llm.requests) == 2
    prompt = llm.requests[0]["body"]["messages"][1]["content"]
    assert str(repo / "main.py") in prompt and str(repo / "util.py") in prompt
    outlines = [json.loads(r) for r in tool_results(llm.requests[1])]
    assert outlines[0]["items"] == ["def main: Start."] and outlines[0]["doc"] == "The entry point."
    assert outlines[1]["items"] == ["def helper"]
    tokens = client.store.redis.xrange(client.store.key("events", "task.token"))
    streamed = [DomainEvent.from_fields(fields).data for _, fields in tokens]
    assert "".join(d["text"] for d in streamed) == json.dumps(answer) and streamed[-1]["done"]


def test_delegation_to_a_python_pool_provider_errors_and_a_key_that_does_not_resolve(
    client: Client, llm: FakeLLM, key_file: str
) -> None:
    delegator = AgentSpec.model_validate({
        "name": "delegator", "kind": "llm", "capabilities": ["text.delegate"],
        "retry": {"max_attempts": 3, "backoff_s": 0},
        "llm": {"provider": "openai", "model": "m-1", "base_url": llm.openai_url,
                "api_key_file": key_file, "max_retries": 1,
                "tools": [{"agent": "test.echo", "timeout_s": 30}]},
    })  # fmt: skip
    client.agents.apply([echo_spec(), delegator])
    llm.reply(tool_calls=[("c1", "test_echo", {"text": "ab", "times": 2}),
                          ("c2", "test_echo", {"text": "c"})])  # fmt: skip
    llm.reply("abab and c")

    result = client.tasks.run("text.delegate", {"prompt": "echo twice"})

    assert result.ok, result.error
    assert result.output["output"] == "abab and c"
    tools = llm.requests[0]["body"]["tools"]
    assert tools[0]["function"]["name"] == "test_echo"
    assert tools[0]["function"]["parameters"]["required"] == ["text"]  # the echo skill's schema
    assert [json.loads(r)["text"] for r in tool_results(llm.requests[1])] == ["abab", "c"]

    llm.error(500, "upstream down", headers={"Retry-After": "0.01"})
    llm.error(500, "upstream down", headers={"Retry-After": "0.01"})
    failed = client.tasks.run("text.delegate", {"prompt": "again"})
    assert not failed.ok and failed.error is not None
    assert (failed.error.type, failed.error.retryable, failed.attempts) == (
        "ProviderError",
        False,
        1,
    )
    assert len(llm.requests) == 4  # 2 for the first task; 1 try + 1 SDK retry, no task retry

    keyless = AgentSpec.model_validate({
        "name": "keyless", "kind": "llm", "capabilities": ["text.keyless"],
        "llm": {"provider": "anthropic", "model": "m", "api_key_env": "DAFNCK_TEST_NEVER_SET"},
    })  # fmt: skip
    with pytest.raises(SpecInvalid) as caught:  # checked where the agent runs, when created
        client.agents.apply([keyless])
    assert any(p.startswith("llm.api_key_env:") for p in caught.value.problems), caught.value
    assert "DAFNCK_TEST_NEVER_SET" in str(caught.value)
    assert {r.spec.name for r in client.agents.ls()} == {"delegator", "echo"}


def test_a_client_follows_one_llm_tasks_tokens_over_sse(
    api: TestClient, keys: Keys, llm: FakeLLM, key_file: str
) -> None:
    admin = keys()
    spec = {"name": "streamer", "kind": "llm", "capabilities": ["text.stream"],
            "llm": {"provider": "anthropic", "model": "m-1", "base_url": llm.anthropic_url,
                    "api_key_file": key_file, "stream": True}}  # fmt: skip
    created = api.post("/v1/agents", json=spec, headers=admin)
    assert created.status_code in (200, 201), created.text
    texts = {"first": "the first task's answer, " * 5, "second": "and the second one's, " * 5}
    for task_id, text in texts.items():
        llm.reply(text)
        body = {"id": task_id, "capability": "text.stream", "input": {"prompt": "hi"}}
        done = api.post("/v1/tasks?wait=true", json=body, headers=admin)
        assert done.status_code == 200 and done.json()["output"]["text"] == text, done.text

    url = "/v1/events/stream?type=task.token&subject=second&cursor=0-0"
    pieces: list[dict[str, Any]] = []
    with api.stream("GET", url, headers=admin) as live:
        for line in live.iter_lines():
            if line.startswith("data: "):
                pieces.append(json.loads(line[6:]))
                if pieces[-1]["data"]["done"]:
                    break
    assert {p["subject"] for p in pieces} == {"second"}
    assert "".join(p["data"]["text"] for p in pieces) == texts["second"]
    assert [p["data"]["seq"] for p in pieces] == list(range(len(pieces)))
