"""Live streams through Serve over real HTTP: a WebSocket client and an SSE client that drop
mid-stream and resume from the last id they saw lose nothing and see nothing twice, though
the execution moved on while they were away."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from cluster.auth.models import Role
from tests.e2e.conftest import ECHO, Tenant

GATED = {
    "name": "stream-gated",
    "steps": [
        {"id": "first", "uses": "test.echo", "with": {"text": "a"}},
        {"id": "go", "uses": "test.echo", "with": {"text": "b"}, "approval": {"prompt": "go?"},
         "needs": ["first"]},
        {"id": "last", "uses": "test.echo", "with": {"text": "c"}, "needs": ["go"]},
    ],
}  # fmt: skip
#: Frames read before the client drops.
BEFORE_DROP = 2


@pytest.fixture(scope="module")
def admin(api_url: str, tenants: tuple[Tenant, Tenant]) -> Iterator[httpx.Client]:
    """An admin client of tenant A, with the echo agent and the gated workflow defined."""
    with httpx.Client(base_url=api_url, timeout=60, headers=tenants[0].headers(Role.ADMIN)) as h:
        assert h.post("/v1/agents", json=ECHO).status_code == 200
        assert h.post("/v1/workflows", json=GATED).status_code == 201
        yield h


def _at_gate(http: httpx.Client) -> str:
    """A new execution of the gated workflow, once it waits at its gate."""
    eid: str = http.post("/v1/executions", json={"workflow": GATED["name"]}).json()["id"]
    deadline = time.monotonic() + 60
    while http.get(f"/v1/executions/{eid}").json()["status"] != "waiting_approval":
        assert time.monotonic() < deadline, f"execution {eid} never reached its gate"
        time.sleep(0.1)
    return eid


def _approve_and_wait(http: httpx.Client, eid: str) -> list[str]:
    """Approve the gate, wait for the end; the ids of the whole event log."""
    assert http.post(f"/v1/executions/{eid}/steps/go/approve").status_code == 200
    deadline = time.monotonic() + 60
    while http.get(f"/v1/executions/{eid}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, f"execution {eid} never succeeded"
        time.sleep(0.1)
    events = http.get(f"/v1/executions/{eid}/events", params={"limit": 1000}).json()["events"]
    return [e["id"] for e in events]


def test_websocket_client_drops_and_resumes_without_loss(
    admin: httpx.Client, api_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    eid = _at_gate(admin)
    url = f"{api_url.replace('http', 'ws', 1)}/v1/ws/executions/{eid}"
    headers = tenants[0].headers(Role.VIEWER)
    with connect(url, additional_headers=headers, open_timeout=30) as ws:
        first = [json.loads(ws.recv(timeout=30)) for _ in range(BEFORE_DROP)]
    everything = _approve_and_wait(admin, eid)  # the execution moves on while we are away
    with connect(f"{url}?cursor={first[-1]['id']}", additional_headers=headers) as ws:
        rest = [json.loads(frame) for frame in ws]  # ends when the server closes (1000)
    seen = [f["id"] for f in first + rest]
    assert seen == everything
    assert rest[-1]["event"]["type"] == "execution.succeeded"


def _sse_events(response: httpx.Response, limit: int | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    frame: dict[str, Any] = {}
    for line in response.iter_lines():
        if line.startswith("id: "):
            frame["id"] = line[4:]
        elif line.startswith("data: "):
            frame["data"] = json.loads(line[6:])
        elif not line and frame:
            events.append(frame)
            frame = {}
            if limit is not None and len(events) == limit:
                break
    return events


def test_sse_client_drops_and_resumes_with_last_event_id(
    admin: httpx.Client, api_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    eid = _at_gate(admin)
    path = f"{api_url}/v1/executions/{eid}/events/stream"
    headers = tenants[0].headers(Role.VIEWER)
    with httpx.stream("GET", path, headers=headers, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        first = _sse_events(response, BEFORE_DROP)
    everything = _approve_and_wait(admin, eid)
    resume = {**headers, "Last-Event-ID": first[-1]["id"]}
    with httpx.stream("GET", path, headers=resume, timeout=30) as response:
        rest = _sse_events(response)  # the stream ends once the execution has ended
    assert [e["id"] for e in first + rest] == everything
    assert rest[-1]["data"]["type"] == "execution.succeeded"
