"""A2A through Serve: our agents published to the official a2a-sdk client, and a real
a2a-sdk server registered as a capability of ours."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.helpers import new_data_part, new_message, new_text_part
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    ListTasksRequest,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

from actors.a2a_wire import parts_output
from cluster.auth.models import Role as DkRole
from tests.e2e.conftest import Tenant
from tests.fixtures.a2a_server import Reverser, a2a_server

AGENTS = [
    {
        "name": "a2a-echo",
        "capabilities": ["test.echo"],
        "entrypoint": "tests.fixtures.agents:echo",
        "description": "repeats text",
    },
    {
        "name": "a2a-shout",
        "capabilities": ["text.shout"],
        "entrypoint": "tests.fixtures.a2a_server:shout",
    },
]


@pytest.fixture(scope="module")
def published(api_url: str, tenants: tuple[Tenant, Tenant]) -> Iterator[None]:
    """The module's agents in the shared e2e tenant, under capabilities no other test uses."""
    operator = tenants[0].headers(DkRole.OPERATOR)
    for agent in AGENTS:
        response = httpx.post(f"{api_url}/v1/agents", json=agent, headers=operator, timeout=60)
        assert response.status_code == 200, response.text
    yield
    for agent in AGENTS:
        httpx.delete(f"{api_url}/v1/agents/{agent['name']}@1.0.0", headers=operator, timeout=60)


@pytest.fixture(scope="module")
def remote() -> Iterator[tuple[Reverser, str]]:
    executor = Reverser()
    with a2a_server(executor) as url:
        yield executor, url


async def _ask(url: str, key: str, message: Any, streaming: bool = False) -> list[StreamResponse]:
    """Resolve the card at `url` and send one message with the a2a-sdk client."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        client = await ClientFactory(
            ClientConfig(httpx_client=http, streaming=streaming)
        ).create_from_url(url)
        events = [e async for e in client.send_message(SendMessageRequest(message=message))]
        if events[0].HasField("task"):  # then GetTask, as it is stored now
            got = await client.get_task(GetTaskRequest(id=events[0].task.id))
            events.append(StreamResponse(task=got))
        return events


def test_card_names_skills_schemas_and_bearer_auth(
    api_url: str, tenants: tuple[Tenant, Tenant], published: None
) -> None:
    viewer = tenants[0].headers(DkRole.VIEWER)
    response = httpx.get(f"{api_url}/a2a/a2a-echo/.well-known/agent-card.json", headers=viewer)
    assert response.status_code == 200, response.text
    card = response.json()
    assert card["name"] == "a2a-echo" and card["description"] == "repeats text"
    assert card["supportedInterfaces"][0]["url"] == f"{api_url}/a2a/a2a-echo"
    assert [s["id"] for s in card["skills"]] == ["test.echo"]
    assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "bearer"
    schemas = card["capabilities"]["extensions"][0]["params"]
    assert schemas["test.echo"]["required"] == ["text"]


async def _listed(url: str, key: str) -> list[str]:
    """The ids `ListTasks` answers for the agent at `url`."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        client = await ClientFactory(ClientConfig(httpx_client=http)).create_from_url(url)
        return [t.id for t in (await client.list_tasks(ListTasksRequest())).tasks]


def test_sdk_client_sends_data_and_text_and_gets_the_task(
    api_url: str, tenants: tuple[Tenant, Tenant], published: None
) -> None:
    key = tenants[0].keys[DkRole.AGENT]
    data = new_message([new_data_part({"text": "ab", "times": 2})], role=Role.ROLE_USER)
    sent, got = asyncio.run(_ask(f"{api_url}/a2a/a2a-echo", key, data))  # not streamed
    assert sent.task.status.state == TaskState.TASK_STATE_COMPLETED, MessageToDict(sent)
    assert parts_output(list(sent.task.artifacts[0].parts))["text"] == "abab"
    assert got.task.id == sent.task.id and got.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert sent.task.id in asyncio.run(_listed(f"{api_url}/a2a/a2a-echo", key))

    text = new_message([new_text_part("hello")], role=Role.ROLE_USER)
    events = asyncio.run(_ask(f"{api_url}/a2a/a2a-shout", key, text, streaming=True))
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task" and "artifact_update" in kinds and "status_update" in kinds
    final = events[-1].task
    assert final.status.state == TaskState.TASK_STATE_COMPLETED
    assert parts_output(list(final.artifacts[0].parts)) == "HELLO"

    wrong = new_message([new_data_part({"times": 2})], role=Role.ROLE_USER)
    failed = asyncio.run(_ask(f"{api_url}/a2a/a2a-echo", key, wrong))[0].task
    assert failed.status.state == TaskState.TASK_STATE_FAILED
    assert "InputInvalid" in failed.status.message.parts[0].text


def test_no_credential_401_viewer_403_other_tenant_404(
    api_url: str, tenants: tuple[Tenant, Tenant], published: None
) -> None:
    card_url = f"{api_url}/a2a/a2a-echo/.well-known/agent-card.json"
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}}
    assert httpx.get(card_url).status_code == 401
    assert httpx.post(f"{api_url}/a2a/a2a-echo", json=rpc).status_code == 401
    viewer = tenants[0].headers(DkRole.VIEWER)
    assert httpx.post(f"{api_url}/a2a/a2a-echo", json=rpc, headers=viewer).status_code == 403
    other = tenants[1].headers(DkRole.ADMIN)
    assert httpx.get(card_url, headers=other).status_code == 404
    assert httpx.post(f"{api_url}/a2a/a2a-echo", json=rpc, headers=other).status_code == 404
    agent = {**tenants[0].headers(DkRole.AGENT), "A2A-Version": "1.0"}
    own = httpx.post(f"{api_url}/a2a/a2a-echo", json=rpc, headers=agent)
    assert own.status_code == 200 and own.json()["error"]["code"] == -32001  # task not found


def test_remote_a2a_agent_serves_a_capability(
    api_url: str, tenants: tuple[Tenant, Tenant], remote: tuple[Reverser, str]
) -> None:
    executor, url = remote
    op = tenants[0].headers(DkRole.OPERATOR)
    spec = {
        "name": "a2a-reverser",
        "capabilities": ["text.reverse"],
        "entrypoint": "actors.a2a_remote:A2ARemoteAgent",
        "config": {"url": url, "skills": {"text.reverse": "reverse"}},
    }
    applied = httpx.post(f"{api_url}/v1/agents", json=spec, headers=op, timeout=60)
    assert applied.status_code == 200, applied.text
    task = {"capability": "text.reverse", "input": {"prompt": "stressed"}}
    done = httpx.post(
        f"{api_url}/v1/tasks", params={"wait": "true"}, json=task, headers=op, timeout=60
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded", done.text
    assert done.json()["output"] == "desserts"
    assert executor.seen[-1]["metadata"] == {"skill": "reverse"}
