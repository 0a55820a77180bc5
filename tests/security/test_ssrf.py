"""SSRF: URLs a tenant names (webhooks, an LLM's base_url, MCP and A2A urls) never reach
loopback, private, link-local or metadata addresses under the default `outbound_allow`.

The session's API allows 127.0.0.1 (its tests' fake servers listen there), so these tests
deploy a second application of the same API on the same Serve proxy, at `/ssrf`, built
from the session's settings with the default (empty) allow-list; its replicas, and the
supervisors and agent replicas they start, run with that setting. A loopback receiver
stands where each refused URL points, and must receive nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from actors.webhooks import WebhookSpec, register_webhook
from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.settings import Settings
from cluster.store import connect_store
from tests.e2e.conftest import ECHO
from tests.fixtures.webhook_receiver import Receiver, receiving
from tests.integration.conftest import kill_tenant

APP = "dafnck-ssrf"
GATED = {
    "name": "ssrf-gated",
    "steps": [
        {"id": "say", "uses": "test.echo", "with": {"text": "x"}, "approval": {"prompt": "go?"}}
    ],
}


@pytest.fixture(scope="module")
def guarded_api(api_url: str, e2e_settings: Settings) -> Iterator[str]:
    """The API again, at `/ssrf` of the session's proxy, with `outbound_allow: []`."""
    from ray import serve as ray_serve

    from serve.deployment import INGRESS, settings_env

    settings = e2e_settings.model_copy(update={"outbound_allow": []})
    env = settings_env(settings)
    assert env["DAFNCK_OUTBOUND_ALLOW"] == "[]"
    deployment = INGRESS.options(
        autoscaling_config={"min_replicas": 1, "max_replicas": 1},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}},
    )
    ray_serve.run(deployment.bind(), name=APP, route_prefix="/ssrf")
    url = f"{api_url}/ssrf"
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the /ssrf application did not become ready"
        time.sleep(0.2)
    yield url
    ray_serve.delete(APP)


@pytest.fixture(scope="module")
def admin(security: Security) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh tenant (so its supervisor is started by the /ssrf application) and its admin."""
    tenant = f"ssrf{uuid.uuid4().hex[:8]}"
    key = security.keys.create_api_key(tenant, Role.ADMIN, "admin")[1]
    yield tenant, {"Authorization": f"Bearer {key}"}
    kill_tenant(tenant)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving(failures=0) as server:
        yield server


@pytest.fixture
def guarded(guarded_api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded_api, timeout=120) as client:
        yield client


def _refused(answer: httpx.Response, field: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert field in error["message"], error
    return error


def test_webhooks_to_internal_addresses_are_refused_at_submit(
    guarded: httpx.Client, admin: tuple[str, dict[str, str]], receiver: Receiver
) -> None:
    _, headers = admin
    port = receiver.server_address[1]
    for url in (
        receiver.url,  # http://127.0.0.1:<port>/hook
        f"http://localhost:{port}/hook",  # a name that resolves to loopback
        f"http://[::ffff:127.0.0.1]:{port}/hook",  # IPv4-mapped IPv6
        "http://169.254.169.254/latest/meta-data/",  # the cloud's metadata service
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/",
    ):
        body = {"workflow": "anything", "webhook": {"url": url}}
        error = _refused(guarded.post("/v1/executions", json=body, headers=headers), "webhook.url")
        assert error["type"] == "OutboundRefused" and "outbound_allow" in error["message"]
    assert guarded.get("/v1/executions", headers=headers).json()["executions"] == []
    assert receiver.received == []


def test_a_webhook_that_became_internal_is_refused_at_delivery(
    guarded: httpx.Client,
    admin: tuple[str, dict[str, str]],
    receiver: Receiver,
    e2e_settings: Settings,
) -> None:
    """A record whose URL passed when it was given (a name that resolved elsewhere then, as
    DNS rebinding does) still connects nowhere internal: the supervisor checks again, and
    the events say only "refused"."""
    tenant, headers = admin
    assert guarded.post("/v1/agents", json=ECHO, headers=headers).status_code == 200
    assert guarded.post("/v1/workflows", json=GATED, headers=headers).status_code == 201
    started = guarded.post("/v1/executions", json={"workflow": "ssrf-gated"}, headers=headers)
    assert started.status_code == 202, started.text
    execution_id = started.json()["id"]
    store = connect_store(e2e_settings).for_tenant(tenant)
    register_webhook(store, execution_id, WebhookSpec.model_validate({"url": receiver.url}))
    _wait_for(guarded, headers, execution_id, "step.waiting_approval")
    approve = f"/v1/executions/{execution_id}/steps/say/approve"
    assert guarded.post(approve, headers=headers).status_code == 200

    failed = _wait_for(guarded, headers, execution_id, "webhook.failed")
    assert failed["data"]["error"] == "refused" and failed["data"]["attempts"] == 1
    attempts = _events(guarded, headers, execution_id, "webhook.attempt_failed")
    assert [e["data"]["error"] for e in attempts] == ["refused"]
    assert receiver.received == []


def _events(
    http: httpx.Client, headers: dict[str, str], execution_id: str, kind: str
) -> list[dict[str, Any]]:
    page = http.get(f"/v1/executions/{execution_id}/events", headers=headers).json()
    return [e["event"] for e in page["events"] if e["event"]["type"] == kind]


def _wait_for(
    http: httpx.Client, headers: dict[str, str], execution_id: str, kind: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while not (found := _events(http, headers, execution_id, kind)):
        assert time.monotonic() < deadline, f"no {kind} event"
        time.sleep(0.2)
    return found[0]


def _llm(name: str, **llm: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "llm",
        "capabilities": [f"ssrf.{name.replace('-', '_')}"],
        "llm": {"provider": "openai", "model": "m", **llm},
    }


def test_agents_naming_internal_urls_are_refused_when_applied(
    guarded: httpx.Client, admin: tuple[str, dict[str, str]], receiver: Receiver
) -> None:
    _, headers = admin
    port = receiver.server_address[1]
    cases = [
        (_llm("base-url", base_url=f"http://127.0.0.1:{port}/v1"), "llm.base_url"),
        (_llm("base-name", base_url=f"http://localhost:{port}/v1"), "llm.base_url"),
        (_llm("mcp-url", tools=[{"mcp": {"url": f"http://127.0.0.1:{port}/mcp"}}]),
         "llm.tools[0].mcp.url"),
        ({"name": "a2a-meta", "capabilities": ["ssrf.a2a"],
          "entrypoint": "actors.a2a_remote:A2ARemoteAgent",
          "config": {"url": "http://169.254.169.254/agent"}}, "config.url"),
    ]  # fmt: skip
    for spec, field in cases:
        _refused(guarded.post("/v1/agents", json=spec, headers=headers), field)
    names = {a["spec"]["name"] for a in guarded.get("/v1/agents", headers=headers).json()["agents"]}
    assert names.isdisjoint({spec["name"] for spec, _ in cases})
    assert receiver.received == []
