"""Messages over the ASGI app: send, broadcast, publish, channels for participants only,
history pages; roles and tenants."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from actors.client import Client
from cluster.auth.models import Role
from tests.integration import test_api_executions as shared
from tests.integration.test_api_executions import Keys

api, keys, stepper = shared.api, shared.keys, shared.stepper  # fixtures
pytestmark = pytest.mark.timeout(120)


def test_messages_channels_and_history(api: TestClient, keys: Keys, stepper: Client) -> None:
    admin, operator, viewer = keys(), keys(Role.OPERATOR), keys(Role.VIEWER)
    sent = api.post("/v1/agents/stepper/messages", json={"payload": {"n": 1}}, headers=admin)
    assert sent.status_code == 201 and sent.json()["target"] == "inbox:stepper"
    again = api.post(
        "/v1/messages", json={"recipient": "stepper", "payload": {"n": 2}}, headers=keys(Role.AGENT)
    )
    assert again.status_code == 201
    assert api.post("/v1/agents/nobody/messages", json={}, headers=admin).status_code == 404
    assert (
        api.post(
            "/v1/messages", json={"recipient": "stepper", "sender": "x"}, headers=admin
        ).status_code
        == 422
    )
    assert api.post("/v1/agents/stepper/messages", json={}, headers=viewer).status_code == 403
    wide = api.post(
        "/v1/messages/broadcast", json={"capability": "test.step"}, headers=admin
    ).json()
    assert wide["count"] == 1 and list(wide["delivered"]) == ["stepper"]
    assert api.post("/v1/messages/broadcast", json={}, headers=admin).status_code == 422
    assert (
        api.post("/v1/topics/news/messages", json={"type": "hello"}, headers=admin).status_code
        == 201
    )

    first = api.get("/v1/messages/history?target=inbox:stepper&limit=2", headers=viewer).json()
    assert [m["payload"].get("n") for m in first["messages"]] == [1, 2]
    rest = api.get(
        f"/v1/messages/history?target=inbox:stepper&cursor={first['next_cursor']}", headers=viewer
    ).json()
    assert len(rest["messages"]) == 1 and rest["next_cursor"] is None
    assert first["messages"][0]["sender"].startswith("key:")
    assert api.get("/v1/messages/history?target=bogus", headers=viewer).status_code == 422

    channel = api.post("/v1/channels", json={"participants": ["bob"]}, headers=admin).json()
    cid = channel["id"]
    assert (
        api.post(
            f"/v1/channels/{cid}/messages", json={"payload": {"hi": 1}}, headers=admin
        ).status_code
        == 201
    )
    page = api.get(f"/v1/channels/{cid}/messages", headers=admin).json()
    assert [m["payload"] for m in page["messages"]] == [{"hi": 1}]
    assert api.get(f"/v1/channels/{cid}", headers=admin).json()["participants"][1] == "bob"
    for method, path in [("GET", f"/v1/channels/{cid}/messages"), ("POST", f"/v1/channels/{cid}/messages"),
                         ("GET", f"/v1/messages/history?target=channel:{cid}")]:  # fmt: skip
        assert api.request(method, path, json={}, headers=operator).status_code == 403, path
    other = keys(tenant="other" + uuid.uuid4().hex[:6])
    assert api.get(f"/v1/channels/{cid}/messages", headers=other).status_code == 404
