"""An execution's signals and per-step cancel and skip, and task cancel, over real HTTP
through Serve: a signal becomes the waiting step's output, a cancelled step's (or task's)
work stops on the agent's replica (its marker never lands), and bad calls get their 4xx."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.auth.models import Role
from tests.e2e.conftest import Tenant
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(240)

MARKER = {
    "name": "ctl-marker",
    "capabilities": ["test.marker"],
    "entrypoint": "tests.fixtures.cancellable:write_later",
    "replicas": {"min": 1, "max": 1},
}
GATED = {
    "name": "ctl-gated",
    "steps": [{"id": "go", "wait": {"signal": "go"}}],
    "outputs": {"said": "${{ steps.go.output.said }}"},
}


@pytest.fixture(scope="module")
def marker_agent(api_url: str, tenants: tuple[Tenant, Tenant]) -> None:
    operator = tenants[0].headers(Role.OPERATOR)
    answer = httpx.post(f"{api_url}/v1/agents", json=MARKER, headers=operator, timeout=60)
    assert answer.status_code == 200, answer.text


def _define_and_start(http: httpx.Client, headers: dict[str, str], spec: dict[str, Any]) -> str:
    defined = http.post("/v1/workflows", json=spec, headers=headers)
    assert defined.status_code in (200, 201), defined.text
    started = http.post("/v1/executions", json={"workflow": spec["name"]}, headers=headers)
    assert started.status_code == 202, started.text
    return str(started.json()["id"])


def _ended(http: httpx.Client, headers: dict[str, str], eid: str) -> dict[str, Any]:
    wait_until(
        lambda: (
            http.get(f"/v1/executions/{eid}", headers=headers).json()["status"]
            in ("succeeded", "failed", "cancelled")
        ),
        60,
        f"execution {eid} to end",
    )
    answer = http.get(f"/v1/executions/{eid}", headers=headers)
    return answer.json()  # type: ignore[no-any-return]


def test_a_signal_over_http_becomes_the_waiting_steps_output(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    op, since = a.headers(Role.OPERATOR), time.time() - 1
    eid = _define_and_start(http, op, GATED)
    base = f"/v1/executions/{eid}/signals"
    bad = http.post(f"{base}/Not%20a%20name", json={}, headers=op)
    assert bad.status_code == 422 and "name" in bad.text, bad.text
    viewer = http.post(f"{base}/go", json={}, headers=a.headers(Role.VIEWER))
    assert viewer.status_code == 403
    other = http.post(f"{base}/go", json={"said": "no"}, headers=b.headers(Role.OPERATOR))
    assert other.status_code == 404, other.text
    sent = http.post(f"{base}/go", json={"said": "yes"}, headers=op)
    assert sent.status_code == 200, sent.text
    done = _ended(http, op, eid)
    assert done["status"] == "succeeded" and done["outputs"] == {"said": "yes"}, done
    query: dict[str, Any] = {"action": "executions:control", "since": since}
    audit = http.get("/v1/audit", params=query, headers=a.headers(Role.ADMIN)).json()
    assert any(e["object"] == f"{eid}/signal:go" for e in audit["entries"]), audit


def test_a_cancelled_step_stops_on_its_replica_and_the_next_runs(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], marker_agent: None, tmp_path: Path
) -> None:
    op = tenants[0].headers(Role.OPERATOR)
    spec = {
        "name": "ctl-branches",
        "steps": [
            {"id": "slow", "uses": "test.marker", "with": {
                "started": str(tmp_path / "started"), "marker": str(tmp_path / "marker"),
                "seconds": 30}},
            {"id": "after", "uses": "test.marker", "needs": ["slow"],
             "trigger_rule": "all_done", "with": {
                "started": str(tmp_path / "s2"), "marker": str(tmp_path / "m2"), "seconds": 0}},
        ],
    }  # fmt: skip
    eid = _define_and_start(http, op, spec)
    wait_until((tmp_path / "started").exists, 60, "the slow step to start on its replica")
    url = f"/v1/executions/{eid}/steps/slow/cancel"
    cancelled = http.post(url, json={"reason": "not needed"}, headers=op)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["steps"]["slow"]["status"] == "cancelled"
    again = http.post(url, headers=op)
    assert again.status_code == 409, again.text
    done = _ended(http, op, eid)
    assert done["steps"]["after"]["status"] == "succeeded", done
    assert (tmp_path / "m2").exists()
    assert not (tmp_path / "marker").exists()  # the cancel reached the replica's task
    skipped = http.post(f"/v1/executions/{eid}/steps/after/skip", json={}, headers=op)
    assert skipped.status_code == 409  # the execution has ended


def test_a_skipped_step_counts_as_skipped(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    op = tenants[0].headers(Role.OPERATOR)
    spec = {
        "name": "ctl-skip",
        "steps": [{"id": "go", "wait": {"signal": "go"}}, {"id": "other", "wait": {"signal": "x"}}],
    }
    eid = _define_and_start(http, op, spec)
    headers = {**op, "Idempotency-Key": f"skip-{eid}"}
    url = f"/v1/executions/{eid}/steps/go/skip"
    first = http.post(url, json={"reason": "later"}, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["steps"]["go"]["status"] == "skipped"
    replayed = http.post(url, json={"reason": "later"}, headers=headers)
    assert replayed.status_code == 200 and replayed.json() == first.json()  # not a 409
    assert http.post(f"/v1/executions/{eid}/signals/x", headers=op).status_code == 200
    assert _ended(http, op, eid)["steps"]["go"]["status"] == "skipped"


def test_a_cancelled_http_task_never_writes_its_marker(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], marker_agent: None, tmp_path: Path
) -> None:
    agent = tenants[0].headers(Role.AGENT)
    started, marker = tmp_path / "started", tmp_path / "marker"
    task: dict[str, Any] = {"capability": "test.marker",
            "input": {"started": str(started), "marker": str(marker), "seconds": 5}}  # fmt: skip
    accepted = http.post("/v1/tasks", json=task, headers=agent)
    assert accepted.status_code == 202, accepted.text
    wait_until(started.exists, 60, "the task to start on its replica")
    location = accepted.headers["location"]
    cancelled = http.post(f"{location}/cancel", headers=agent)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # A second task started after the cancel sleeps 6 s: once it has ended, the first one's
    # 5 s sleep would have ended too (and written its marker), had it not been cancelled.
    after = {**task, "input": {**task["input"], "started": str(tmp_path / "s2"),
                               "marker": str(tmp_path / "m2"), "seconds": 6}}  # fmt: skip
    done = http.post("/v1/tasks", params={"wait": "true"}, json=after, headers=agent)
    assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
    assert not marker.exists()
    assert http.get(location, headers=agent).json()["status"] == "cancelled"


async def _a2a_cancel(url: str, key: str, files: dict[str, Any]) -> tuple[Any, Any]:
    """Stream a message to the marker agent, cancel its task once it has started; the
    cancel's answer and the task as GetTask then shows it."""
    from a2a.client import ClientConfig, ClientFactory
    from a2a.helpers import new_data_part, new_message
    from a2a.types.a2a_pb2 import CancelTaskRequest, GetTaskRequest, SendMessageRequest
    from a2a.types.a2a_pb2 import Role as A2ARole

    message = new_message([new_data_part(files)], role=A2ARole.ROLE_USER)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as h:
        client = await ClientFactory(ClientConfig(httpx_client=h, streaming=True)).create_from_url(
            url
        )
        stream = client.send_message(SendMessageRequest(message=message))
        first = await anext(stream)
        task_id = first.task.id
        deadline = asyncio.get_running_loop().time() + 60
        while not Path(files["started"]).exists():
            assert asyncio.get_running_loop().time() < deadline, "the A2A task never started"
            await asyncio.sleep(0.1)
        cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
        async for _ in stream:  # the stream ends with the cancel
            pass
        return cancelled, await client.get_task(GetTaskRequest(id=task_id))


def test_an_a2a_cancel_stops_the_routed_task(
    api_url: str, tenants: tuple[Tenant, Tenant], marker_agent: None, tmp_path: Path
) -> None:
    from a2a.types.a2a_pb2 import TaskState

    agent = tenants[0].headers(Role.AGENT)
    files = {"started": str(tmp_path / "started"), "marker": str(tmp_path / "marker"),
             "seconds": 5}  # fmt: skip
    key = tenants[0].keys[Role.AGENT]
    cancelled, got = asyncio.run(_a2a_cancel(f"{api_url}/a2a/{MARKER['name']}", key, files))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    assert got.status.state == TaskState.TASK_STATE_CANCELED
    after = {
        "capability": "test.marker",
        "input": {  # as in the HTTP test: outlasts the first
            "started": str(tmp_path / "s2"),
            "marker": str(tmp_path / "m2"),
            "seconds": 6,
        },
    }
    done = httpx.post(f"{api_url}/v1/tasks", params={"wait": "true"}, json=after, headers=agent,
                      timeout=60)  # fmt: skip
    assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
    assert not (tmp_path / "marker").exists()
