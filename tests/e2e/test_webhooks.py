"""Execution-end webhooks through Serve: a local receiver that fails twice, then accepts;
Standard Webhooks signatures checked independently; the delivery in the execution's events."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from cluster.auth.models import Role
from tests.e2e.conftest import ECHO, Tenant
from tests.fixtures.webhook_receiver import Receiver, receiving

FLOW = {"name": "wh-flow", "steps": [{"id": "say", "uses": "test.echo", "with": {"text": "hook"}}]}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving(failures=2) as server:
        yield server


def _signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The Standard Webhooks signature, computed here without our code or the package."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _events(http: httpx.Client, execution_id: str, kind: str, admin: dict[str, str]) -> list[Any]:
    page = http.get(f"/v1/executions/{execution_id}/events", headers=admin).json()
    return [e["event"] for e in page["events"] if e["event"]["type"] == kind]


def test_webhook_is_signed_retried_and_recorded_once(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], receiver: Receiver
) -> None:
    admin = tenants[0].headers(Role.ADMIN)
    assert http.post("/v1/agents", json=ECHO, headers=admin, timeout=60).status_code == 200
    assert http.post("/v1/workflows", json=FLOW, headers=admin).status_code == 201
    body = {"workflow": "wh-flow", "webhook": {"url": receiver.url}}
    started = http.post("/v1/executions", json=body, headers=admin)
    assert started.status_code == 202, started.text
    execution_id = started.json()["id"]

    deadline = time.monotonic() + 60
    while not _events(http, execution_id, "webhook.delivered", admin):
        assert time.monotonic() < deadline, receiver.received
        time.sleep(0.2)

    assert [status for _, _, status in receiver.received] == [500, 500, 200]
    assert len({h["webhook-id"] for h, _, _ in receiver.received}) == 1
    secret = http.get("/v1/webhooks/secret", headers=admin).json()["secret"]
    for headers, sent, _ in receiver.received:
        assert headers["webhook-signature"] == _signature(secret, headers, sent)
    headers, sent, _ = receiver.received[-1]
    payload = Webhook(secret).verify(sent, headers)
    assert payload == json.loads(sent)
    assert payload["type"] == "execution.succeeded"
    assert payload["data"]["id"] == execution_id and payload["data"]["status"] == "succeeded"
    assert payload["data"]["workflow"] == "wh-flow"

    delivered = _events(http, execution_id, "webhook.delivered", admin)
    assert len(delivered) == 1
    assert delivered[0]["data"]["attempts"] == 3 and delivered[0]["data"]["status"] == 200
    assert delivered[0]["data"]["webhook_id"] == headers["webhook-id"]
    failed = _events(http, execution_id, "webhook.attempt_failed", admin)
    assert [(e["data"]["attempt"], e["data"]["status"]) for e in failed] == [(1, 500), (2, 500)]


def test_webhook_url_must_be_http(http: httpx.Client, tenants: tuple[Tenant, Tenant]) -> None:
    admin = tenants[0].headers(Role.ADMIN)
    for webhook in (
        {"url": "ftp://127.0.0.1/x"},
        {"url": "not a url"},
        {"url": "http://h", "x": 1},
    ):
        body = {"workflow": "wh-flow", "webhook": webhook}
        refused = http.post("/v1/executions", json=body, headers=admin)
        assert refused.status_code == 422 and "webhook" in refused.text, refused.text


def test_secret_is_for_admins_and_per_tenant(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    assert (
        http.get("/v1/webhooks/secret", headers=tenants[0].headers(Role.OPERATOR)).status_code
        == 403
    )
    first = http.get("/v1/webhooks/secret", headers=tenants[0].headers(Role.ADMIN)).json()["secret"]
    again = http.get("/v1/webhooks/secret", headers=tenants[0].headers(Role.ADMIN)).json()["secret"]
    other = http.get("/v1/webhooks/secret", headers=tenants[1].headers(Role.ADMIN)).json()["secret"]
    assert first == again and first.startswith("whsec_") and other != first
