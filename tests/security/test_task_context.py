"""A task's workflow context is the platform's, never the caller's: a task submitted over
the API with another execution's ids does not read that execution's cached LLM replies, a
task claiming `budget_waived` still meets its budget, and an endless timeout is refused.

Real Ray (a fresh tenant's supervisor and pools), real Valkey, the API's ASGI app, and an
LLM agent whose model is a local server speaking OpenAI's wire protocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format

from actors.client import Client
from actors.models import AgentSpec
from cluster.auth.models import Role
from cluster.settings import Settings
from serve.deployment import APP_NAME
from serve.protos import dafnck_pb2 as pb
from serve.protos import dafnck_pb2_grpc as rpc
from tests.e2e.conftest import ECHO, Tenant
from tests.fixtures.fake_llm import FakeLLM
from tests.integration import test_api_executions as shared
from tests.integration.helpers import slow_spec

keys = shared.keys  # fixture: API keys of the test's tenant
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def api(tenant_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    import serve.app

    routers = ["serve.api_health", "serve.api_agents", "serve.api_tasks"]
    monkeypatch.setattr(serve.app, "ROUTER_MODULES", routers)
    with TestClient(serve.app.build_app(tenant_settings)) as client:
        yield client


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def chat_spec(llm: FakeLLM, key_file: Path, **llm_fields: Any) -> AgentSpec:
    return AgentSpec.model_validate({
        "name": "chat", "kind": "llm", "capabilities": ["chat.reply"],
        "llm": {"provider": "openai", "model": "m-1", "base_url": llm.openai_url,
                "api_key_file": str(key_file), "max_retries": 0, **llm_fields},
    })  # fmt: skip


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "openai.key"
    path.write_text("sk-security-test-key-1234\n")
    return path


def run(api: TestClient, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    answer = api.post("/v1/tasks?wait=true", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_spoofed_execution_and_step_do_not_read_another_tasks_llm_replies(
    client: Client, api: TestClient, keys: shared.Keys, llm: FakeLLM, key_file: Path
) -> None:
    client.agents.apply([chat_spec(llm, key_file)])
    llm.reply("the victim's private answer")
    llm.reply("the attacker's own answer")
    victim = run(api, keys(Role.ADMIN), {"id": "victim-1", "capability": "chat.reply",
                                         "input": {"prompt": "private question"}})  # fmt: skip
    assert victim["output"]["output"] == "the victim's private answer"

    # The victim's replies are cached under execution "task:victim-1", step "-".
    spoofed = {"execution_id": "task:victim-1", "step_id": "-", "step_attempt": 1,
               "workflow_id": "w", "attempt": 1}  # fmt: skip
    attacker = run(api, keys(Role.AGENT), {"capability": "chat.reply", "context": spoofed,
                                           "input": {"prompt": "anything"}})  # fmt: skip

    assert attacker["status"] == "succeeded", attacker
    assert attacker["output"]["output"] == "the attacker's own answer"
    assert len(llm.requests) == 2  # the model was asked again: nothing was replayed


def test_a_spoofed_budget_waiver_does_not_lift_the_agents_budget(
    client: Client, api: TestClient, keys: shared.Keys, llm: FakeLLM, key_file: Path
) -> None:
    schema = {"type": "object", "required": ["answer"],
              "properties": {"answer": {"type": "string"}}}  # fmt: skip
    spec = chat_spec(llm, key_file, output_schema=schema, budget={"max_tokens": 1})
    client.agents.apply([spec])
    llm.reply("not JSON, so the agent asks the model again")
    llm.reply('{"answer": "paid for past the budget"}')

    result = run(api, keys(Role.AGENT), {"capability": "chat.reply",
                                         "context": {"budget_waived": True},
                                         "input": {"prompt": "go"}})  # fmt: skip

    assert result["status"] == "failed", result
    assert result["error"]["type"] == "BudgetExceeded", result["error"]
    assert len(llm.requests) == 1  # the second, over-budget call never reached the model


@pytest.mark.parametrize("raw", ["1e999", "Infinity", "NaN", "-1"])
def test_an_endless_or_invalid_timeout_is_refused(
    api: TestClient, keys: shared.Keys, raw: str
) -> None:
    body = '{"capability": "test.slow", "input": {"seconds": 0}, "timeout_s": ' + raw + "}"
    headers = {**keys(Role.AGENT), "Content-Type": "application/json"}
    answer = api.post("/v1/tasks", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert "timeout_s" in answer.text


def test_a_timeout_above_the_agents_is_capped_at_the_agents(
    client: Client, api: TestClient, keys: shared.Keys
) -> None:
    client.agents.apply([slow_spec(timeout_s=1)])
    result = run(api, keys(Role.AGENT), {"capability": "test.slow", "timeout_s": 1e9,
                                         "input": {"seconds": 30}})  # fmt: skip
    assert result["status"] == "failed", result
    assert result["error"]["type"] == "TaskTimeout"
    assert "after 1.0s" in result["error"]["message"]


def test_a_task_over_grpc_starts_from_a_fresh_context_too(
    api_url: str, e2e_settings: Settings, tenants: tuple[Tenant, Tenant]
) -> None:
    tenant = tenants[0]
    admin = tenant.headers(Role.ADMIN)
    with httpx.Client(base_url=api_url, timeout=60, headers=admin) as http:
        assert http.post("/v1/agents", json=ECHO).status_code == 200
    meta = [("application", APP_NAME), ("authorization", f"Bearer {tenant.keys[Role.AGENT]}")]
    spoofed = {"tenant": tenants[1].name, "execution_id": "victim", "step_id": "s",
               "budget_waived": True, "attempt": 7, "traceparent": TRACEPARENT}  # fmt: skip
    body = {"capability": "test.echo", "input": {"text": "x"}, "context": spoofed}
    with grpc.insecure_channel(f"127.0.0.1:{e2e_settings.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = rpc.OrchestrationStub(channel)
        task = json_format.ParseDict(body, pb.SubmitTaskRequest().task)
        sent = stub.SubmitTask(pb.SubmitTaskRequest(task=task), metadata=meta)
        record = json_format.MessageToDict(stub.GetTask(pb.GetTaskRequest(id=sent.id),
                                                        metadata=meta).record)  # fmt: skip
        endless = json_format.ParseDict({**body, "timeout_s": 1e999}, pb.SubmitTaskRequest().task)
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitTask(pb.SubmitTaskRequest(task=endless), metadata=meta)
    context = record["task"]["context"]
    assert context["tenant"] == tenant.name and context["traceparent"] == TRACEPARENT
    assert context.get("execution_id") is None and context.get("step_id") is None
    assert context["budget_waived"] is False and context["attempt"] == 1
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "finite" in str(refused.value.details())
