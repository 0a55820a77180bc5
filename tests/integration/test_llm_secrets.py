"""A canary API key, planted in a secret file an llm agent reads, never shows anywhere: a
workflow fails partway (the fake provider echoes the key back in its error), then Ray's
log files, the actor table, every value in Redis (spans included), the execution, its
events and usage, the task result and /metrics through the API, and this process's logs
are searched for it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from fastapi.testclient import TestClient

import serve.app
from actors.client import Client, connect
from actors.models import AgentSpec
from cluster.settings import Settings
from serve.app import build_app
from tests.conftest import SCRAPER
from tests.fixtures.fake_llm import FakeLLM
from tests.integration.helpers import echo_spec

pytestmark = pytest.mark.timeout(150)

ROUTERS = ["serve.api_health", "serve.api_workflows", "serve.api_executions",
           "serve.api_tasks", "serve.api_usage", "serve.api_metrics"]  # fmt: skip


@pytest.fixture
def api(tenant_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(serve.app, "ROUTER_MODULES", ROUTERS)
    with TestClient(build_app(tenant_settings)) as client:
        yield client


@pytest.fixture
def admin(client: Client) -> dict[str, str]:
    from cluster.auth.models import Role
    from cluster.auth.security import Security

    security = Security.from_settings(client.store, client.settings)
    _, secret = security.keys.create_api_key(client.settings.tenant, Role.ADMIN, "canary-test")
    return {"Authorization": f"Bearer {secret}"}


def leaky(url: str, key_file: Path) -> AgentSpec:
    return AgentSpec.model_validate({
        "name": "leaky", "kind": "llm", "capabilities": ["text.leak"],
        "llm": {"provider": "openai", "model": "gpt-4o-mini", "base_url": url,
                "api_key_file": str(key_file), "max_retries": 0},
    })  # fmt: skip


FLOW = {
    "name": "halfway",
    "steps": [
        {"id": "first", "uses": "test.echo", "with": {"text": "fine"}},
        {"id": "second", "uses": "text.leak", "with": {"prompt": "${{ steps.first.output.text }}"}},
    ],
}  # fmt: skip


#: How to read each type of Redis value.
_READERS = {
    "string": lambda r, key: r.get(key),
    "hash": lambda r, key: r.hgetall(key),
    "list": lambda r, key: r.lrange(key, 0, -1),
    "set": lambda r, key: r.smembers(key),
    "zset": lambda r, key: r.zrange(key, 0, -1, withscores=True),
    "stream": lambda r, key: r.xrange(key),
}


def redis_values(client: Client) -> Iterator[tuple[str, str]]:
    """Every key of the whole database (all tenants) with its value, whatever its type."""
    r = client.store.redis
    for key in r.scan_iter(count=1000):
        read = _READERS.get(r.type(key))
        yield key, json.dumps(read(r, key) if read else None, default=str)


def ray_log_files() -> Iterator[tuple[str, bytes]]:
    node = ray._private.worker.global_worker.node
    assert node is not None
    for path in Path(node.get_logs_dir_path()).rglob("*"):
        if path.is_file():
            yield str(path), path.read_bytes()


def test_a_canary_key_appears_nowhere(
    api: TestClient, admin: dict[str, str], tenant_settings: Settings, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    canary = f"canary{uuid.uuid4().hex}"
    key_file = tmp_path / "openai.key"
    key_file.write_text(canary + "\n")
    client = connect(settings=tenant_settings)
    with FakeLLM() as llm:
        echoed = f"Incorrect API key provided: {canary}. (Authorization: Bearer {canary})"
        llm.error(401, echoed).error(401, echoed)
        client.agents.apply([echo_spec(), leaky(llm.openai_url, key_file)])
        responses = [api.post("/v1/workflows", headers=admin, json=FLOW)]
        run = api.post("/v1/executions?wait=true", headers=admin, json={"workflow": "halfway"})
        execution = run.json()
        task = api.post("/v1/tasks?wait=true", headers=admin,
                        json={"capability": "text.leak", "input": {"prompt": "hi"}})  # fmt: skip
        assert len(llm.requests) == 2
        assert llm.requests[0]["headers"]["Authorization"] == f"Bearer {canary}"  # planted
    eid = execution["id"]
    responses += [run, task] + [
        api.get(path, headers=SCRAPER if path == "/metrics" else admin)
        for path in (f"/v1/executions/{eid}", f"/v1/executions/{eid}/events?limit=1000",
                     f"/v1/executions/{eid}/usage", f"/v1/executions/{eid}/tool-calls", "/v1/usage", "/metrics")
    ]  # fmt: skip
    assert execution["status"] == "failed"
    assert execution["steps"]["first"]["status"] == "succeeded"
    assert execution["steps"]["second"]["error"]["type"] == "ProviderError"
    assert "401" in execution["steps"]["second"]["error"]["message"]  # the error still says why
    assert task.json()["status"] == "failed"

    found = [r.request.url.path for r in responses if canary in r.text]
    found += [key for key, value in redis_values(client) if canary in value]
    found += [path for path, data in ray_log_files() if canary.encode() in data]
    actors = json.dumps(ray._private.state.actors(), default=str)
    found += ["the actor table"] if canary in actors else []
    found += ["this process's logs"] if canary in caplog.text else []
    assert not found, f"the canary key leaked into: {found}"
    usage = {
        r.request.url.path: r.json() for r in responses if r.request.url.path.endswith("usage")
    }
    assert usage[f"/v1/executions/{eid}/usage"]["calls"] == 0  # a refused call costs nothing
    assert usage[f"/v1/executions/{eid}/usage"]["workflow"] == "halfway"
    assert usage["/v1/usage"]["tenant"] == tenant_settings.tenant
    assert api.get("/v1/executions/nope/usage", headers=admin).status_code == 404
    assert all(r.status_code in (200, 201, 202) for r in responses), [
        (r.request.url.path, r.status_code) for r in responses
    ]
