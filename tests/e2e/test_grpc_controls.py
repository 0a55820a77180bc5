"""gRPC SignalExecution, CancelStep and SkipStep over a real channel to Serve's gRPC proxy:
the same operations as REST's, with errors as status codes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from cluster.auth.models import Role
from cluster.settings import Settings
from serve.deployment import APP_NAME
from serve.protos import dafnck_pb2 as pb
from serve.protos import dafnck_pb2_grpc as rpc
from tests.e2e.conftest import Tenant
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(180)

WAITS: dict[str, Any] = {
    "name": "grpc-waits",
    "steps": [{"id": "go", "wait": {"signal": "go"}}, {"id": "more", "wait": {"signal": "more"}},
              {"id": "last", "wait": {"signal": "last"}}],
    "outputs": {"said": "${{ steps.go.output.said }}"},
}  # fmt: skip


@pytest.fixture(scope="module")
def workflows(api_url: str, e2e_settings: Settings) -> Iterator[rpc.WorkflowsStub]:
    with grpc.insecure_channel(f"127.0.0.1:{e2e_settings.grpc_port}") as chan:
        grpc.channel_ready_future(chan).result(timeout=60)
        yield rpc.WorkflowsStub(chan)


def _meta(tenant: Tenant, role: Role = Role.OPERATOR) -> list[tuple[str, str]]:
    return [("application", APP_NAME), ("authorization", f"Bearer {tenant.keys[role]}")]


def _code(call: Any, *args: Any, **kwargs: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call(*args, **kwargs)
    return failed.value.code()  # type: ignore[no-any-return]


def _execution(reply: pb.ExecutionReply) -> dict[str, Any]:
    return json_format.MessageToDict(reply.execution)


def test_signal_cancel_and_skip_steps_over_grpc(
    api_url: str, tenants: tuple[Tenant, Tenant], workflows: rpc.WorkflowsStub
) -> None:
    a, b = tenants
    with httpx.Client(base_url=api_url, timeout=60, headers=a.headers(Role.ADMIN)) as http:
        assert http.post("/v1/workflows", json=WAITS).status_code in (200, 201)
    started = workflows.StartExecution(pb.StartExecutionRequest(workflow=WAITS["name"]),
                                       metadata=_meta(a))  # fmt: skip
    eid, meta = started.id, _meta(a)

    bad_name = pb.SignalExecutionRequest(execution_id=eid, name="Not A Name")
    assert _code(workflows.SignalExecution, bad_name, metadata=meta) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_json = pb.SignalExecutionRequest(execution_id=eid, name="go", payload_json="{x")
    assert _code(workflows.SignalExecution, bad_json, metadata=meta) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    signal = pb.SignalExecutionRequest(execution_id=eid, name="go", payload_json='{"said": "hi"}')
    assert _code(workflows.SignalExecution, signal, metadata=_meta(b)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert _code(workflows.SignalExecution, signal, metadata=_meta(a, Role.VIEWER)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    workflows.SignalExecution(signal, metadata=meta)

    cancel = pb.StepActionRequest(execution_id=eid, step="more", reason="not needed")
    cancelled = _execution(workflows.CancelStep(cancel, metadata=meta))
    assert cancelled["steps"]["more"]["status"] == "cancelled"
    assert _code(workflows.CancelStep, cancel, metadata=meta) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    skip = pb.StepActionRequest(execution_id=eid, step="last")
    assert _execution(workflows.SkipStep(skip, metadata=meta))["steps"]["last"]["status"] == (
        "skipped"
    )

    def ended() -> pb.ExecutionReply | None:
        reply = workflows.GetExecution(pb.GetExecutionRequest(id=eid), metadata=meta)
        return reply if reply.status in ("succeeded", "failed", "cancelled") else None

    reply = wait_until(ended, 60, f"execution {eid} to end")
    assert reply is not None
    assert reply.status == "succeeded", reply
    assert _execution(reply)["outputs"] == {"said": "hi"}
