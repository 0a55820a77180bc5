"""Live event streams (SSE and WebSocket) over the ASGI app: a client that drops and comes
back with its last id gets every event it missed exactly once, in order."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import serve.api_streams
from actors.client import Client
from cluster.auth.models import Role
from tests.integration import test_api_executions as shared
from tests.integration.test_api_executions import Keys, all_events, chain, wait_status

api, keys, stepper = shared.api, shared.keys, shared.stepper  # fixtures
pytestmark = pytest.mark.timeout(120)


def sse_events(lines: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """`{"id", "event"}` for each SSE event read, stopping after `limit` events."""
    out: list[dict[str, Any]] = []
    frame: dict[str, Any] = {}
    for line in lines:
        if line.startswith("id: "):
            frame["id"] = line[4:]
        elif line.startswith("data: "):
            frame["event"] = json.loads(line[6:])
        elif not line and frame:
            out.append(frame)
            frame = {}
            if limit is not None and len(out) == limit:
                break
    return out


def start(api: TestClient, headers: dict[str, str], workflow: str) -> str:
    answer = api.post("/v1/executions", json={"workflow": workflow}, headers=headers)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_sse_resumes_after_last_event_id_without_loss_or_repeat(
    api: TestClient, keys: Keys, stepper: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = keys()
    api.post("/v1/workflows", json=chain("live", 3, 0.3), headers=admin)
    eid = start(api, admin, "live")
    url = f"/v1/executions/{eid}/events/stream"
    with api.stream("GET", url, headers=keys(Role.VIEWER)) as first:
        assert first.headers["content-type"].startswith("text/event-stream")
        head = sse_events(first.iter_lines(), limit=3)  # then drop the connection
    resumed = {**admin, "Last-Event-ID": head[-1]["id"]}
    with api.stream("GET", url, headers=resumed) as second:
        tail = sse_events(second.iter_lines())  # runs to the end: the execution ends it
    assert head + tail == all_events(api, admin, eid)
    assert tail[-1]["event"]["type"] == "execution.succeeded"

    with api.stream("GET", f"{url}?cursor={head[1]['id']}", headers=admin) as third:
        assert sse_events(third.iter_lines()) == all_events(api, admin, eid)[2:]
    assert api.get(f"{url}?cursor=bad", headers=admin).status_code == 422
    assert api.get("/v1/executions/nope/events/stream", headers=admin).status_code == 404
    check_sse_sends_keep_alives_while_an_execution_waits(api, keys, monkeypatch)


def check_sse_sends_keep_alives_while_an_execution_waits(
    api: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve.api_streams, "KEEPALIVE_S", 0.0)
    monkeypatch.setattr(serve.api_streams, "BLOCK_MS", 100)
    admin = keys()
    gated = {"name": "gated", "steps": [{"id": "go", "uses": "test.step", "approval": {}}]}
    api.post("/v1/workflows", json=gated, headers=admin)
    eid = start(api, admin, "gated")
    wait_status(api, admin, eid, "waiting_approval")
    with api.stream("GET", f"/v1/executions/{eid}/events/stream", headers=admin) as live:
        for line in live.iter_lines():
            if line == ": keep-alive":
                break
    api.post(f"/v1/executions/{eid}/cancel", headers=admin)


def test_websocket_resumes_from_cursor_and_checks_credentials(
    api: TestClient, keys: Keys, stepper: Client
) -> None:
    admin = keys()
    token = admin["Authorization"][7:]
    api.post("/v1/workflows", json=chain("ws", 3, 0.3), headers=admin)
    eid = start(api, admin, "ws")
    url = f"/v1/ws/executions/{eid}?access_token={token}"
    with api.websocket_connect(url) as ws:
        head = [ws.receive_json() for _ in range(2)]
    with api.websocket_connect(f"{url}&cursor={head[-1]['id']}") as ws:
        tail = []
        with pytest.raises(WebSocketDisconnect) as ended:
            while True:
                tail.append(ws.receive_json())
    assert ended.value.code == 1000
    assert head + tail == all_events(api, admin, eid)

    for path, code in [
        (f"/v1/ws/executions/{eid}", 4401),
        (f"/v1/ws/executions/{eid}?access_token=dk_nope", 4401),
        (f"/v1/ws/executions/{eid}?access_token={keys(Role.AGENT)['Authorization'][7:]}", 4403),
        (f"/v1/ws/executions/nope?access_token={token}", 4404),
    ]:
        with api.websocket_connect(path) as ws, pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == code, path


def test_event_bus_stream_resumes_by_cursor(api: TestClient, keys: Keys, stepper: Client) -> None:
    admin = keys()
    api.post("/v1/workflows", json=chain("bus", 3, 0), headers=admin)
    eid = start(api, admin, "bus")
    wait_status(api, admin, eid, "succeeded")
    expected = [e for e in all_events(api, admin, eid) if e["event"]["type"].startswith("step.")]
    url = "/v1/events/stream?type=step.*&cursor=0-0"
    with api.stream("GET", url, headers=keys(Role.VIEWER)) as first:
        head = sse_events(first.iter_lines(), limit=4)
    with api.stream(
        "GET", "/v1/events/stream?type=step.*", headers={**admin, "Last-Event-ID": head[-1]["id"]}
    ) as second:
        tail = sse_events(second.iter_lines(), limit=len(expected) - 4)
    seen = head + tail
    assert len({e["event"]["id"] for e in seen}) == len(seen) == len(expected)

    def key(e: dict[str, Any]) -> tuple[str, str, float]:
        return (e["type"], e.get("step") or e.get("subject") or "", e["at"])

    assert sorted(key(e["event"]) for e in seen) == sorted(key(e["event"]) for e in expected)
    for kind in {e["event"]["type"] for e in expected}:  # each type's events in order
        ats = [e["event"]["at"] for e in seen if e["event"]["type"] == kind]
        assert ats == sorted(ats)
    assert api.get("/v1/events/stream?cursor=x=y", headers=admin).status_code == 422
