"""Bad input answers a 4xx JSON error naming the field, never a 500: over real HTTP through
Serve and over gRPC, each row one input that used to reach Redis (or the parser) unchecked."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from cluster.auth.models import Role
from cluster.settings import Settings
from serve.deployment import APP_NAME
from serve.protos import dafnck_pb2 as pb
from serve.protos import dafnck_pb2_grpc as rpc
from tests.e2e.conftest import ECHO, Tenant

FLOW = {"name": "bad-input", "steps": [{"id": "say", "uses": "test.echo", "with": {"text": "x"}}]}
#: Past 2^64: Redis keeps a stream id's parts as 64-bit numbers.
HUGE = str(2**64 + 5)
#: A data page cursor (`[time, id]`) whose time is NaN.
NAN_CURSOR = base64.urlsafe_b64encode(json.dumps(["NaN", "x"]).encode()).decode()


@pytest.fixture(scope="module")
def execution_id(api_url: str, tenants: tuple[Tenant, Tenant]) -> str:
    """An execution of tenant A: its `exec:<id>:events` stream exists, so `<id>:events` as
    an id would name a stream where a hash is read (WRONGTYPE) if it went unchecked."""
    with httpx.Client(base_url=api_url, timeout=60, headers=tenants[0].headers(Role.ADMIN)) as h:
        assert h.post("/v1/agents", json=ECHO).status_code == 200
        assert h.post("/v1/workflows", json=FLOW).status_code in (201, 409)
        started = h.post("/v1/executions", json={"workflow": "bad-input"}, params={"wait": True})
        assert started.status_code in (200, 202), started.text
        return str(started.json()["id"])


def _error(answer: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    error: dict[str, Any] = answer.json()["error"]
    assert field in error["message"], error
    return error


def test_deeply_nested_json_without_a_credential(http: httpx.Client) -> None:
    nested = "[" * 200_000
    answer = http.post(
        "/v1/auth/token", content=nested, headers={"content-type": "application/json"}
    )
    _error(answer, 400, "body")


def test_rows_of_bad_query_values(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], execution_id: str
) -> None:
    admin = tenants[0].headers(Role.ADMIN)
    rows = [
        ("/v1/data", {"since": "nan"}, "since"),
        ("/v1/data", {"until": "inf"}, "until"),
        ("/v1/messages/history", {"target": "inbox:echo", "since_ms": HUGE}, "since_ms"),
        ("/v1/messages/history", {"target": "inbox:echo", "until_ms": HUGE}, "until_ms"),
        ("/v1/messages/history", {"target": "inbox:echo", "cursor": f"{HUGE}-0"}, "cursor"),
        ("/v1/messages/history", {"target": "channel:x:info"}, "target"),
        ("/v1/messages/history", {"target": "inbox:a:b"}, "target"),
        (f"/v1/executions/{execution_id}/events", {"cursor": f"1-{HUGE}"}, "cursor"),
        ("/v1/channels/c1/messages", {"cursor": f"{HUGE}-1"}, "cursor"),
        ("/v1/data", {"cursor": NAN_CURSOR}, "cursor"),
        ("/v1/audit", {"since": "inf"}, "since"),
        ("/v1/audit", {"until": str(2**64 + 5)}, "until"),
        ("/v1/audit/unauthenticated", {"since": "nan"}, "since"),
    ]
    for path, params, field in rows:
        _error(http.get(path, params=params, headers=admin), 422, field)


def test_agent_references_with_bad_version_ranges(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    admin = tenants[0].headers(Role.ADMIN)
    rows = [
        ("POST", "/v1/agents/echo@>>>/scale", {"replicas": 1}, "path.name"),
        ("PUT", "/v1/agents/echo@!!/status", {"status": "active"}, "path.agent_id"),
        ("DELETE", "/v1/agents/echo@>>>", None, "path.agent_id"),
    ]
    for method, path, body, field in rows:
        _error(http.request(method, path, json=body, headers=admin), 422, field)


@pytest.mark.parametrize(
    "cursor",
    [
        "types=0-0",  # `events:types`, the set of types, is no stream
        "step.started=0-0,agents=0-0",
        f"step.started={HUGE}-0",
        "Step.Started=0-0",
    ],
)
def test_bus_stream_cursors_name_event_types(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], cursor: str
) -> None:
    viewer = tenants[0].headers(Role.VIEWER)
    answer = http.get("/v1/events/stream", params={"cursor": cursor}, headers=viewer)
    _error(answer, 422, "cursor")


def test_execution_stream_cursor_past_64_bits(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], execution_id: str
) -> None:
    viewer = tenants[0].headers(Role.VIEWER)
    path = f"/v1/executions/{execution_id}/events/stream"
    _error(http.get(path, params={"cursor": f"{HUGE}-0"}, headers=viewer), 422, "cursor")


@pytest.fixture(scope="module")
def channel(api_url: str, e2e_settings: Settings) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{e2e_settings.grpc_port}") as chan:
        grpc.channel_ready_future(chan).result(timeout=60)
        yield chan


def test_grpc_ids_are_checked_before_they_name_a_key(
    channel: grpc.Channel, tenants: tuple[Tenant, Tenant], execution_id: str
) -> None:
    meta = [("application", APP_NAME), ("authorization", f"Bearer {tenants[0].keys[Role.ADMIN]}")]
    workflows, orchestration = rpc.WorkflowsStub(channel), rpc.OrchestrationStub(channel)
    stream = f"{execution_id}:events"
    calls = [
        (workflows.GetExecution, pb.GetExecutionRequest(id=stream), "id"),
        (workflows.CancelExecution, pb.CancelExecutionRequest(id=stream), "id"),
        (
            workflows.ApproveStep,
            pb.ApproveStepRequest(execution_id=stream, step="say"),
            "execution_id",
        ),
        (
            workflows.ApproveStep,
            pb.ApproveStepRequest(execution_id=execution_id, step="say:x"),
            "step",
        ),
        (orchestration.GetTask, pb.GetTaskRequest(id="a task id"), "id"),
        (orchestration.ScaleAgent, pb.ScaleAgentRequest(name="Echo:1", replicas=1), "name"),
        (orchestration.ScaleAgent, pb.ScaleAgentRequest(name="echo@>>>", replicas=1), "name"),
    ]
    for call, request, field in calls:
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=meta, timeout=30)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
        assert f"{field}: " in (failed.value.details() or "")
    with pytest.raises(grpc.RpcError) as watched:
        list(workflows.WatchExecution(pb.WatchExecutionRequest(id=stream), metadata=meta))
    assert watched.value.code() == grpc.StatusCode.INVALID_ARGUMENT
