"""gRPC rpcs called as Serve's proxy calls them, over the API's real services and a fake
supervisor (no Ray): each rpc reaches the same supervisor operation, with the same request,
as its REST route; errors become status codes; changes are audited as REST's are."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf import json_format

from actors.contract import CancelExecution, DecideStep, ExecuteWorkflow, Request, ScaleAgent
from actors.models import AgentSpec
from cluster.auth.models import Role
from serve.grpc_api import GrpcApi, RpcFailed
from serve.protos import dafnck_pb2 as pb
from tests.unit.serve.conftest import Api
from workflows.run import new_event
from workflows.spec import StepSpec, WorkflowSpec

Code: TypeAlias = grpc.StatusCode
FLOW = WorkflowSpec(name="flow", steps=[StepSpec(id="review", uses="test.echo")])


class Context:
    """What `RayServegRPCContext` gives an rpc: the caller's metadata, and its answer."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.metadata = [(k.lower(), v) for k, v in headers.items()]
        self.code: Code | None = None
        self.details = ""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def set_code(self, code: Code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Any) -> None: ...


def _grpc(api: Api) -> GrpcApi:
    """The ingress's rpcs over the test app's services (`ApiIngress` mixes them in)."""
    ingress: Any = GrpcApi()
    ingress.app = SimpleNamespace(state=SimpleNamespace(services=api.services))
    return ingress  # type: ignore[no-any-return]


async def _gated(api: Api) -> str:
    """A running execution of FLOW in tenant acme, its `review` step at the gate."""
    spec = FLOW.model_dump(mode="json", by_alias=True)
    await api.http.post("/v1/workflows", json=spec, headers=api.headers())
    started = await api.http.post(
        "/v1/executions", json={"workflow": "flow"}, headers=api.headers()
    )
    eid = str(started.json()["id"])
    api.supervisors["acme"].gate(eid, "review")
    return eid


def _sent(api: Api, kind: type[Request]) -> list[dict[str, Any]]:
    """What the fake supervisor was asked, of one request kind, without the ids."""
    found = [c for c in api.supervisors["acme"].calls if isinstance(c, kind)]
    return [c.model_dump(exclude={"execution_id", "traceparent"}) for c in found]


async def test_a_grpc_decision_is_the_request_a_rest_one_is(api: Api) -> None:
    rpc, operator = _grpc(api), api.headers(Role.OPERATOR)
    for reject in (False, True):
        over_rest, over_grpc = await _gated(api), await _gated(api)
        verb = "reject" if reject else "approve"
        url = f"/v1/executions/{over_rest}/steps/review/{verb}"
        assert (await api.http.post(url, json={"reason": "ok"}, headers=operator)).is_success
        call = pb.ApproveStepRequest(
            execution_id=over_grpc, step="review", reason="ok", reject=reject
        )
        context = Context(operator)
        reply = await rpc.ApproveStep(call, context)
        assert context.code is None, context.details
        approval = json_format.MessageToDict(reply.execution)["steps"]["review"]["approval"]
        assert approval["decision"] == ("rejected" if reject else "approved")
    rest_1, grpc_1, rest_2, grpc_2 = _sent(api, DecideStep)
    assert rest_1 == grpc_1 and rest_2 == grpc_2
    assert (grpc_1["approved"], grpc_2["approved"]) == (True, False)
    assert grpc_1["by"].startswith("key:") and grpc_1["reason"] == "ok"


async def test_control_rpcs_move_the_execution_as_rest_does(api: Api) -> None:
    rpc, eid = _grpc(api), await _gated(api)
    operator = api.headers(Role.OPERATOR)

    async def status(call: Any, message: Any, headers: dict[str, str] = operator) -> Any:
        context = Context(headers)
        reply = await call(message, context)
        return reply.status if context.code is None else context.code

    assert await status(rpc.PauseExecution, pb.PauseExecutionRequest(id=eid)) == "paused"
    assert await status(rpc.PauseExecution, pb.PauseExecutionRequest(id=eid)) == (
        Code.FAILED_PRECONDITION
    )
    assert await status(rpc.ResumeExecution, pb.ResumeExecutionRequest(id=eid)) == "running"
    cancel = pb.CancelExecutionRequest(id=eid, reason="wrong")
    assert await status(rpc.CancelExecution, cancel, api.headers(Role.VIEWER)) == (
        Code.PERMISSION_DENIED
    )
    assert await status(rpc.CancelExecution, cancel, api.headers(tenant="other")) == (
        Code.NOT_FOUND
    )
    assert await status(rpc.CancelExecution, cancel) == "cancelled"
    assert await status(rpc.RetryExecution, pb.RetryExecutionRequest(id=eid)) == "running"
    assert await status(rpc.GetExecution, pb.GetExecutionRequest(id="a:b")) == (
        Code.INVALID_ARGUMENT
    )
    [sent] = _sent(api, CancelExecution)  # the viewer's call never reached the supervisor
    assert sent["reason"] == "wrong" and sent["by"].startswith("key:")

    audit = await api.http.get("/v1/audit", params={"action": "executions:control"},
                               headers=api.headers())  # fmt: skip
    outcomes = [(e["object"], e["outcome"]) for e in audit.json()["entries"]]
    started = ("flow", "ok")  # REST's start in `_gated`; a denial names no object, as REST's
    assert sorted(outcomes) == sorted(
        [started, ("", "denied"), (eid, "failed")] + 4 * [(eid, "ok")]
    )


async def test_start_execution_and_scale_agent_send_the_contracts_requests(api: Api) -> None:
    rpc, admin = _grpc(api), api.headers()
    await _gated(api)  # defines FLOW
    inputs = json_format.ParseDict({"x": 1}, pb.StartExecutionRequest().inputs)
    context = Context(admin)
    started = await rpc.StartExecution(
        pb.StartExecutionRequest(workflow="flow", inputs=inputs, version=1), context
    )
    assert (context.code, started.status) == (None, "running")
    [_, sent] = _sent(api, ExecuteWorkflow)  # REST's start, then gRPC's
    assert (sent["workflow"], sent["inputs"], sent["version"]) == ("flow", {"x": 1}, 1)
    unknown = Context(admin)
    await rpc.StartExecution(pb.StartExecutionRequest(workflow="nope"), unknown)
    assert unknown.code == Code.NOT_FOUND

    for version in ("1.0.0", "1.1.0"):
        spec = AgentSpec(name="echo", version=version, capabilities=["test.echo"],
                         entrypoint="tests.fixtures.agents:echo", replicas={"min": 1, "max": 4})  # fmt: skip
        await api.http.post("/v1/agents", json=spec.model_dump(mode="json"), headers=admin)
    context = Context(admin)
    scaled = await rpc.ScaleAgent(pb.ScaleAgentRequest(name="echo", replicas=3), context)
    assert context.code is None and len(scaled.agents) == 2
    calls = [c for c in api.supervisors["acme"].calls if isinstance(c, ScaleAgent)]
    assert sorted((c.agent_id, c.replicas) for c in calls) == [("echo@1.0.0", 3), ("echo@1.1.0", 3)]


async def test_a_watch_holds_a_stream_lease_as_rest_streams_do(api: Api) -> None:
    settings = api.services.settings
    quotas = settings.quotas.model_copy(update={"streams_per_key": 1})
    api.services.settings = settings.model_copy(update={"quotas": quotas})
    rpc, eid = _grpc(api), await _gated(api)
    fake = api.supervisors["acme"]
    fake.executions.commit(fake.runs[eid], events=[new_event(fake.runs[eid], "execution.started")])
    watch, viewer = pb.WatchExecutionRequest(id=eid), api.headers(Role.VIEWER)

    first = rpc.WatchExecution(watch, Context(viewer))
    assert (await anext(first)).type == "execution.started"  # streaming: its lease is held
    refused = Context(viewer)
    with pytest.raises(RpcFailed):
        await anext(rpc.WatchExecution(watch, refused))
    assert refused.code == Code.RESOURCE_EXHAUSTED and "streams_per_key" in refused.details

    await first.aclose()  # the client went away: the lease is given back
    again = rpc.WatchExecution(watch, Context(viewer))
    assert (await anext(again)).type == "execution.started"
    await again.aclose()
