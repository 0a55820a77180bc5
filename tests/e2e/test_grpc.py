"""The gRPC API over a real channel to Serve's gRPC proxy: the same credentials, roles and
tenants as REST, errors as status codes, a task, an execution streamed, reflection."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cluster.auth.models import Role
from cluster.settings import Settings
from serve.deployment import APP_NAME
from serve.protos import dafnck_pb2 as pb
from serve.protos import dafnck_pb2_grpc as rpc
from tests.e2e.conftest import ECHO, Tenant

GATED_NAME = "grpc-gated"
GATED = {
    "name": GATED_NAME,
    "steps": [
        {"id": "first", "uses": "test.echo", "with": {"text": "a"}},
        {"id": "go", "uses": "test.echo", "with": {"text": "b"}, "approval": {"prompt": "go?"},
         "needs": ["first"]},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def channel(api_url: str, e2e_settings: Settings) -> Iterator[grpc.Channel]:
    """A channel to the session Serve's gRPC proxy, once it answers."""
    with grpc.insecure_channel(f"127.0.0.1:{e2e_settings.grpc_port}") as chan:
        grpc.channel_ready_future(chan).result(timeout=60)
        yield chan


@pytest.fixture(scope="module")
def setup(api_url: str, tenants: tuple[Tenant, Tenant]) -> None:
    """The echo agent and a gated workflow in tenant A (over REST: one definition of each)."""
    admin = tenants[0].headers(Role.ADMIN)
    with httpx.Client(base_url=api_url, timeout=60, headers=admin) as http:
        assert http.post("/v1/agents", json=ECHO).status_code == 200
        defined = http.post("/v1/workflows", json=GATED)
        assert defined.status_code == 201, defined.text


def _meta(tenant: Tenant | None, role: Role = Role.ADMIN) -> list[tuple[str, str]]:
    # With several Serve applications the proxy needs the name; with one it is optional.
    meta = [("application", APP_NAME)]
    return [*meta, ("authorization", f"Bearer {tenant.keys[role]}")] if tenant else meta


def _code(call: Any, *args: Any, **kwargs: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call(*args, **kwargs)
    return failed.value.code()  # type: ignore[no-any-return]


def test_credentials_roles_and_tenants_as_for_rest(
    channel: grpc.Channel, tenants: tuple[Tenant, Tenant], setup: None
) -> None:
    a, b = tenants
    orchestration = rpc.OrchestrationStub(channel)
    listing = pb.ListAgentsRequest(capability="test.echo")
    assert _code(orchestration.ListAgents, listing, metadata=_meta(None)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    bad = [("application", APP_NAME), ("authorization", "Bearer dk_0000000000000000_nope")]
    assert _code(orchestration.ListAgents, listing, metadata=bad) == grpc.StatusCode.UNAUTHENTICATED
    found = orchestration.ListAgents(listing, metadata=_meta(a, Role.VIEWER))
    assert [agent["spec"]["name"] for agent in map(json_format.MessageToDict, found.agents)] == [
        "echo"
    ]
    scale = pb.ScaleAgentRequest(name="echo", replicas=1)
    assert _code(orchestration.ScaleAgent, scale, metadata=_meta(a, Role.VIEWER)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _code(orchestration.ScaleAgent, scale, metadata=_meta(b)) == grpc.StatusCode.NOT_FOUND
    assert orchestration.ListAgents(listing, metadata=_meta(b)).agents == []
    too_many = pb.ScaleAgentRequest(name="echo", replicas=-1)
    assert _code(orchestration.ScaleAgent, too_many, metadata=_meta(a)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_submit_a_task_and_get_its_result(
    channel: grpc.Channel, tenants: tuple[Tenant, Tenant], setup: None
) -> None:
    a, b = tenants
    orchestration = rpc.OrchestrationStub(channel)
    task = json_format.ParseDict({"capability": "test.echo", "input": {"text": "hi", "times": 2}},
                                 pb.SubmitTaskRequest().task)  # fmt: skip
    done = orchestration.SubmitTask(
        pb.SubmitTaskRequest(task=task, wait=True), metadata=_meta(a, Role.AGENT)
    )
    assert done.status == "succeeded"
    assert json_format.MessageToDict(done.record)["output"]["text"] == "hihi"

    pending = orchestration.SubmitTask(pb.SubmitTaskRequest(task=task), metadata=_meta(a))
    assert pending.status in ("pending", "running", "succeeded")
    deadline = time.monotonic() + 30
    record = pending
    while record.status not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        record = orchestration.GetTask(pb.GetTaskRequest(id=pending.id), metadata=_meta(a))
    assert record.status == "succeeded", record
    assert json_format.MessageToDict(record.record)["result"]["output"]["text"] == "hihi"
    get_b = pb.GetTaskRequest(id=pending.id)
    assert _code(orchestration.GetTask, get_b, metadata=_meta(b)) == grpc.StatusCode.NOT_FOUND

    wrong = json_format.ParseDict({"capability": "BAD CAP"}, pb.SubmitTaskRequest().task)
    bad_call = pb.SubmitTaskRequest(task=wrong, wait=True)
    assert _code(orchestration.SubmitTask, bad_call, metadata=_meta(a)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def _wait_status(workflows: rpc.WorkflowsStub, meta: Any, eid: str, status: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if workflows.GetExecution(pb.GetExecutionRequest(id=eid), metadata=meta).status == status:
            return
        time.sleep(0.1)
    pytest.fail(f"execution {eid} never reached {status}")


def test_start_an_execution_approve_and_stream_its_events(
    channel: grpc.Channel, tenants: tuple[Tenant, Tenant], setup: None
) -> None:
    a, b = tenants
    workflows = rpc.WorkflowsStub(channel)
    started = workflows.StartExecution(
        pb.StartExecutionRequest(workflow=GATED_NAME), metadata=_meta(a, Role.OPERATOR)
    )
    eid = started.id
    _wait_status(workflows, _meta(a), eid, "waiting_approval")
    approve = pb.ApproveStepRequest(execution_id=eid, step="go", reason="fine")
    assert _code(workflows.ApproveStep, approve, metadata=_meta(a, Role.VIEWER)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _code(workflows.ApproveStep, approve, metadata=_meta(b)) == grpc.StatusCode.NOT_FOUND
    watch_b = workflows.WatchExecution(pb.WatchExecutionRequest(id=eid), metadata=_meta(b))
    assert _code(list, watch_b) == grpc.StatusCode.NOT_FOUND

    assert workflows.ApproveStep(approve, metadata=_meta(a, Role.OPERATOR)).id == eid
    events = list(workflows.WatchExecution(pb.WatchExecutionRequest(id=eid), metadata=_meta(a)))
    types = [e.type for e in events]
    assert types[-1] == "execution.succeeded", types
    assert types.count("step.succeeded") == 2, types
    # Resuming after an event gives exactly the events after it.
    middle = len(events) // 2
    rest = workflows.WatchExecution(
        pb.WatchExecutionRequest(id=eid, cursor=events[middle].id), metadata=_meta(a)
    )
    assert [e.id for e in rest] == [e.id for e in events[middle + 1 :]]


def test_cancel_an_execution(
    channel: grpc.Channel, tenants: tuple[Tenant, Tenant], setup: None
) -> None:
    a = tenants[0]
    workflows = rpc.WorkflowsStub(channel)
    eid = workflows.StartExecution(
        pb.StartExecutionRequest(workflow=GATED_NAME), metadata=_meta(a)
    ).id
    _wait_status(workflows, _meta(a), eid, "waiting_approval")
    wordy = pb.CancelExecutionRequest(id=eid, reason="x" * 2001)  # REST's limit too
    assert _code(workflows.CancelExecution, wordy, metadata=_meta(a)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    cancelled = workflows.CancelExecution(
        pb.CancelExecutionRequest(id=eid, reason="not today"), metadata=_meta(a)
    )
    assert cancelled.status == "cancelled"
    again = pb.CancelExecutionRequest(id=eid)
    assert _code(workflows.CancelExecution, again, metadata=_meta(a)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    unknown = pb.GetExecutionRequest(id=uuid.uuid4().hex)
    assert _code(workflows.GetExecution, unknown, metadata=_meta(a)) == grpc.StatusCode.NOT_FOUND


def test_pause_resume_and_retry_an_execution(
    channel: grpc.Channel, tenants: tuple[Tenant, Tenant], setup: None
) -> None:
    a, b = tenants
    workflows = rpc.WorkflowsStub(channel)
    operator = _meta(a, Role.OPERATOR)
    eid = workflows.StartExecution(
        pb.StartExecutionRequest(workflow=GATED_NAME), metadata=operator
    ).id
    _wait_status(workflows, operator, eid, "waiting_approval")
    pause = pb.PauseExecutionRequest(id=eid)
    assert _code(workflows.PauseExecution, pause, metadata=_meta(a, Role.VIEWER)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _code(workflows.PauseExecution, pause, metadata=_meta(b)) == grpc.StatusCode.NOT_FOUND
    assert workflows.PauseExecution(pause, metadata=operator).status == "paused"
    assert _code(workflows.PauseExecution, pause, metadata=operator) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    resume = pb.ResumeExecutionRequest(id=eid)
    assert workflows.ResumeExecution(resume, metadata=operator).status == "running"
    assert _code(workflows.ResumeExecution, resume, metadata=operator) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    retry = pb.RetryExecutionRequest(id=eid)
    assert _code(workflows.RetryExecution, retry, metadata=operator) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )  # it has not ended
    workflows.CancelExecution(pb.CancelExecutionRequest(id=eid), metadata=operator)
    retried = workflows.RetryExecution(retry, metadata=operator)
    assert retried.status in ("running", "waiting_approval")  # it may reach the gate first
    _wait_status(workflows, operator, eid, "waiting_approval")  # at the gate again
    workflows.ApproveStep(pb.ApproveStepRequest(execution_id=eid, step="go"), metadata=operator)
    _wait_status(workflows, operator, eid, "succeeded")
    bad = pb.PauseExecutionRequest(id="not an id")
    assert _code(workflows.PauseExecution, bad, metadata=operator) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_grpc_and_a_rest_decision_are_the_same_operation(
    channel: grpc.Channel, api_url: str, tenants: tuple[Tenant, Tenant], setup: None, verb: str
) -> None:
    """The same caller deciding the same gate over REST and over gRPC: the same execution
    afterwards, the same record of who decided and why, the same audit entry, and the same
    refusal when the step no longer waits."""
    a = tenants[0]
    workflows = rpc.WorkflowsStub(channel)
    operator = _meta(a, Role.OPERATOR)
    with httpx.Client(base_url=api_url, timeout=60, headers=a.headers(Role.OPERATOR)) as http:
        over_rest, over_grpc = (
            workflows.StartExecution(
                pb.StartExecutionRequest(workflow=GATED_NAME), metadata=operator
            ).id
            for _ in range(2)
        )
        for eid in (over_rest, over_grpc):
            _wait_status(workflows, operator, eid, "waiting_approval")
        decided = http.post(f"/v1/executions/{over_rest}/steps/go/{verb}", json={"reason": "same"})
        assert decided.status_code == 200, decided.text
        decision = pb.ApproveStepRequest(
            execution_id=over_grpc, step="go", reason="same", reject=verb == "reject"
        )
        workflows.ApproveStep(decision, metadata=operator)
        end = "succeeded" if verb == "approve" else "failed"
        for eid in (over_rest, over_grpc):
            _wait_status(workflows, operator, eid, end)
        ended = [http.get(f"/v1/executions/{eid}").json() for eid in (over_rest, over_grpc)]
        subject = f"key:{a.keys[Role.OPERATOR].split('_')[1]}"  # the operator key's
        step_states = [e["steps"]["go"] for e in ended]
        approvals = [{k: v for k, v in st["approval"].items() if k != "at"} for st in step_states]
        decision_word = "approved" if verb == "approve" else "rejected"
        assert approvals[0] == {"decision": decision_word, "by": subject, "reason": "same"}
        assert approvals[1] == approvals[0]
        assert step_states[1]["status"] == step_states[0]["status"]

        # Deciding again, over either surface: the same refusal (409, FAILED_PRECONDITION)
        # with the same message.
        for eid in (over_rest, over_grpc):
            again = http.post(f"/v1/executions/{eid}/steps/go/{verb}", json={"reason": "same"})
            with pytest.raises(grpc.RpcError) as refused:
                workflows.ApproveStep(
                    pb.ApproveStepRequest(execution_id=eid, step="go", reject=verb == "reject"),
                    metadata=operator,
                )
            assert again.status_code == 409, again.text
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.details() == again.json()["error"]["message"]

        audit = http.get(
            "/v1/audit", params={"action": "executions:approve", "limit": 1000},
            headers=a.headers(Role.ADMIN),
        ).json()["entries"]  # fmt: skip
    kept = {
        eid: sorted((e["subject"], e["outcome"]) for e in audit if e["object"] == f"{eid}/go")
        for eid in (over_rest, over_grpc)
    }
    assert kept[over_rest] == kept[over_grpc] == [
        (subject, "failed"), (subject, "failed"), (subject, "ok"),
    ], kept  # fmt: skip


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"dafnck.v1.Orchestration", "dafnck.v1.Workflows"} <= services
