"""The gRPC API (serve/protos/dafnck.proto) on the same Serve ingress as REST.

Serve's gRPC proxy calls the ingress method named after the rpc with the request message
and a `grpc_context`; `GrpcApi` is mixed into `ApiIngress`, so REST and gRPC share the
replicas, their `Services` and the rules: the credential is `authorization: Bearer ...`
metadata (or `x-api-key`), checked (awaited) by `serve.deps.authenticate`/`authorized` as
for REST, each change is audited by `Caller.audit` as REST's are, and platform errors
become gRPC status codes (`STATUS`) with the message as details.

Every rpc that asks or changes the tenant's supervisor builds the operation's request
model (`actors.contract`) and awaits that operation on the tenant's gateway (`Caller.gateway`),
as the REST routes, the CLI and the Python client do: `ApproveStep` is `decide_step`,
`PauseExecution` is `pause_workflow`, one argument list everywhere. Only reads of the
store without an async client (agent records, an execution's record) run in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from actors import contract as op
from actors.models import DiscoveryCriteria, Task, new_id
from actors.task_records import TaskRecords
from cluster.auth.models import Action
from cluster.errors import DafnckError, InputInvalid, RateLimited, Unauthorized
from serve.api_agents import ScaleRequest
from serve.api_executions import DecisionRequest, ExecutionRequest
from serve.api_streams import STREAM_ID, execution_frames
from serve.api_streams import _lease as stream_lease
from serve.api_tasks import start_task
from serve.deps import Caller, authenticate, authorized, header_credential, services_of
from serve.patterns import ID, STEP_KEY, TASK_ID, check, check_agent_ref
from serve.protos import dafnck_pb2 as pb
from workflows.execution import Execution
from workflows.spec_waits import SIGNAL
from workflows.tables import execution_view

log = logging.getLogger(__name__)

#: What `grpc_servicer_functions` names: the proxy registers both services from these.
SERVICER_FUNCTIONS = [
    "serve.protos.dafnck_pb2_grpc.add_OrchestrationServicer_to_server",
    "serve.protos.dafnck_pb2_grpc.add_WorkflowsServicer_to_server",
]
#: The HTTP status a platform error answers with, as a gRPC status code.
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

M = TypeVar("M", bound=Message)
C = TypeVar("C", bound=BaseModel)


class RpcFailed(Exception):
    """Ends a streaming rpc whose status code is already set on its context."""


def status_of(exc: DafnckError) -> grpc.StatusCode:
    return STATUS.get(exc.status_code, grpc.StatusCode.INTERNAL)


def _fail(context: Any, exc: BaseException) -> None:
    """Set the status and details an error answers with (never a trace)."""
    if isinstance(exc, DafnckError):
        context.set_code(status_of(exc))
        context.set_details(exc.message)
        if isinstance(exc, RateLimited):
            context.set_trailing_metadata((("retry-after", str(max(1, round(exc.retry_after_s)))),))
    else:
        log.exception("gRPC call failed")
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details("the call failed; see the server log")


def to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(dict(data), struct_pb2.Struct())


def _contract(model: type[C], what: str, **fields: Any) -> C:
    """The pydantic contract from request fields. Raises: InputInvalid naming every field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in exc.errors()]
        raise InputInvalid(what, problems) from None


def _fields(message: Message, what: str) -> dict[str, Any]:
    """A Struct as JSON data. Raises: InputInvalid (a NaN or infinite number: not JSON, and
    protobuf's error names no field)."""
    try:
        return json_format.MessageToDict(message)
    except (json_format.Error, ValueError):  # protobuf raises a bare ValueError for these
        problem = f"{what}: every number must be finite (no NaN or Infinity)"
        raise InputInvalid(what, [problem]) from None


def _json_payload(text: str, most: int) -> Any:
    """A signal's payload from its JSON text (empty: None). Raises: InputInvalid."""
    if not text:
        return None
    if len(text.encode()) > most:
        raise InputInvalid("signal", [f"payload_json: larger than {most} bytes"])
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise InputInvalid("signal", [f"payload_json: not JSON at {where}: {exc.msg}"]) from None


def _execution(execution: Execution) -> pb.ExecutionReply:
    data = execution_view(execution)  # Arrow tables summarised, as REST shows them
    return pb.ExecutionReply(id=execution.id, status=data["status"], execution=to_struct(data))


def _task_record(record: Mapping[str, Any]) -> pb.TaskReply:
    return pb.TaskReply(id=record["id"], status=record["status"], record=to_struct(record))


class GrpcApi:
    """The rpcs of the Orchestration and Workflows services, as ingress methods."""

    async def _caller(self, context: Any, action: Action) -> Caller:
        """Authenticate, rate-limit and authorize the call's credential, as REST does.

        Raises: Unauthorized, RateLimited, Forbidden.
        """
        metadata = {k.lower(): v for k, v in context.invocation_metadata()}
        token = header_credential(metadata)
        svc = await services_of(self.app)  # type: ignore[attr-defined]
        if token is None:
            await svc.gate.failed(None, str(context.peer()))
            raise Unauthorized("no credential: send metadata 'authorization: Bearer <token>'")
        request_id = uuid.uuid4().hex  # the server's own: a client's id is never trusted
        who = await authenticate(svc, token, request_id, str(context.peer()))
        return await authorized(who, action)

    async def _answer(self, context: Any, empty: M, work: Callable[[], Awaitable[M]]) -> M:
        """The reply of `work`, or `empty` with the error's status code set on the context."""
        try:
            return await work()
        except Exception as exc:
            _fail(context, exc)
            return empty

    # -- Orchestration (method names are the rpc names) --------------------------------------------------------------------

    async def SubmitTask(self, request: pb.SubmitTaskRequest, grpc_context: Any) -> pb.TaskReply:
        async def work() -> pb.TaskReply:
            who = await self._caller(grpc_context, Action.TASKS_RUN)
            task = _contract(Task, "task", **_fields(request.task, "task"))
            result = await start_task(who, task, request.wait)
            if result is not None:
                data = result.model_dump(mode="json")
                return pb.TaskReply(id=task.id, status=result.status, record=to_struct(data))
            return _task_record(await TaskRecords(who.tenant_services.store).get(task.id))

        return await self._answer(grpc_context, pb.TaskReply(), work)

    async def GetTask(self, request: pb.GetTaskRequest, grpc_context: Any) -> pb.TaskReply:
        async def work() -> pb.TaskReply:
            who = await self._caller(grpc_context, Action.TASKS_READ)
            task_id = check(request.id, TASK_ID, "id", "task request")
            return _task_record(await TaskRecords(who.tenant_services.store).get(task_id))

        return await self._answer(grpc_context, pb.TaskReply(), work)

    async def ListAgents(self, request: pb.ListAgentsRequest, grpc_context: Any) -> pb.AgentsReply:
        async def work() -> pb.AgentsReply:
            who = await self._caller(grpc_context, Action.AGENTS_READ)
            criteria = _contract(
                DiscoveryCriteria, "agent query", capability=request.capability or None
            )
            records = await asyncio.to_thread(
                who.tenant_services.registry.discover_agents, criteria
            )
            return pb.AgentsReply(agents=[to_struct(r.model_dump(mode="json")) for r in records])

        return await self._answer(grpc_context, pb.AgentsReply(), work)

    async def ScaleAgent(self, request: pb.ScaleAgentRequest, grpc_context: Any) -> pb.AgentsReply:
        async def work() -> pb.AgentsReply:
            who = await self._caller(grpc_context, Action.AGENTS_WRITE)
            check_agent_ref(request.name, "name", "scale request")
            body = _contract(ScaleRequest, "scale request", replicas=request.replicas)
            gateway = who.gateway
            async with who.audit(Action.AGENTS_WRITE, obj=f"agent:{request.name}"):
                # every version `name` (or `name@range`) matches: a store read
                found = await asyncio.to_thread(who.tenant_services.registry.resolve, request.name)
                records = [
                    await gateway.scale_agents(
                        op.ScaleAgent(agent_id=r.agent_id, replicas=body.replicas)
                    )
                    for r in found
                ]
            return pb.AgentsReply(agents=[to_struct(r.model_dump(mode="json")) for r in records])

        return await self._answer(grpc_context, pb.AgentsReply(), work)

    # -- Workflows ------------------------------------------------------------------------

    async def StartExecution(
        self, request: pb.StartExecutionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        async def work() -> pb.ExecutionReply:
            who = await self._caller(grpc_context, Action.EXECUTIONS_CONTROL)
            body = _contract(
                ExecutionRequest,
                "execution request",
                workflow=request.workflow,
                inputs=_fields(request.inputs, "inputs"),
                version=request.version or None,
            )
            start = op.ExecuteWorkflow(
                workflow=body.workflow, inputs=body.inputs, version=body.version,
                execution_id=new_id(),
            )  # fmt: skip
            async with who.audit(Action.EXECUTIONS_CONTROL, obj=body.workflow):
                return _execution(await who.gateway.execute_workflow(start))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def GetExecution(
        self, request: pb.GetExecutionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        async def work() -> pb.ExecutionReply:
            who = await self._caller(grpc_context, Action.EXECUTIONS_READ)
            ref = op.ExecutionRef(execution_id=check(request.id, ID, "id", "execution request"))
            return _execution(await who.gateway.get_execution_status(ref))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def ApproveStep(
        self, request: pb.ApproveStepRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        """`decide_step`: approve, or with `reject` refuse, as REST's approve/reject do."""

        async def work() -> pb.ExecutionReply:
            who = await self._caller(grpc_context, Action.EXECUTIONS_APPROVE)
            body = _contract(DecisionRequest, "approval", reason=request.reason)
            decision = op.DecideStep(
                execution_id=check(request.execution_id, ID, "execution_id", "approval"),
                step=check(request.step, STEP_KEY, "step", "approval"),
                approved=not request.reject, by=who.principal.subject, reason=body.reason,
            )  # fmt: skip
            obj = f"{decision.execution_id}/{decision.step}"
            async with who.audit(Action.EXECUTIONS_APPROVE, obj=obj):
                return _execution(await who.gateway.decide_step(decision))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        async def work() -> pb.ExecutionReply:
            who = await self._caller(grpc_context, Action.EXECUTIONS_CONTROL)
            body = _contract(DecisionRequest, "cancel request", reason=request.reason)
            cancel = op.CancelExecution(
                execution_id=check(request.id, ID, "id", "cancel request"),
                by=who.principal.subject, reason=body.reason,
            )  # fmt: skip
            async with who.audit(Action.EXECUTIONS_CONTROL, obj=cancel.execution_id):
                return _execution(await who.gateway.cancel_workflow(cancel))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def PauseExecution(
        self, request: pb.PauseExecutionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        async def work() -> pb.ExecutionReply:
            who, ref = await self._control(grpc_context, request.id, "pause request")
            async with who.audit(Action.EXECUTIONS_CONTROL, obj=ref.execution_id):
                return _execution(await who.gateway.pause_workflow(ref))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def ResumeExecution(
        self, request: pb.ResumeExecutionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        async def work() -> pb.ExecutionReply:
            who, ref = await self._control(grpc_context, request.id, "resume request")
            async with who.audit(Action.EXECUTIONS_CONTROL, obj=ref.execution_id):
                return _execution(await who.gateway.resume_workflow(ref))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def RetryExecution(
        self, request: pb.RetryExecutionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        async def work() -> pb.ExecutionReply:
            who, ref = await self._control(grpc_context, request.id, "retry request")
            async with who.audit(Action.EXECUTIONS_CONTROL, obj=ref.execution_id):
                return _execution(await who.gateway.retry_workflow(ref))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def SignalExecution(
        self, request: pb.SignalExecutionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        """`signal_execution`, as REST's POST .../signals/{name} (payload: JSON text)."""

        async def work() -> pb.ExecutionReply:
            who, ref = await self._control(grpc_context, request.execution_id, "signal")
            name = check(request.name, SIGNAL, "name", "signal")
            payload = _json_payload(request.payload_json, who.services.settings.max_body_bytes)
            signal = op.SignalExecution(execution_id=ref.execution_id, name=name, payload=payload)
            obj = f"{ref.execution_id}/signal:{name}"
            async with who.audit(Action.EXECUTIONS_CONTROL, obj=obj):
                return _execution(await who.gateway.signal_execution(signal))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def CancelStep(
        self, request: pb.StepActionRequest, grpc_context: Any
    ) -> pb.ExecutionReply:
        return await self._step_action(grpc_context, request, "cancel")

    async def SkipStep(self, request: pb.StepActionRequest, grpc_context: Any) -> pb.ExecutionReply:
        return await self._step_action(grpc_context, request, "skip")

    async def _step_action(
        self, grpc_context: Any, request: pb.StepActionRequest, verb: str
    ) -> pb.ExecutionReply:
        """`cancel_step` or `skip_step`, as REST's POST .../steps/{step}/cancel|skip."""

        async def work() -> pb.ExecutionReply:
            who, ref = await self._control(grpc_context, request.execution_id, f"{verb} step")
            body = _contract(DecisionRequest, f"{verb} step", reason=request.reason)
            action = op.StepAction(
                execution_id=ref.execution_id, step=check(request.step, STEP_KEY, "step", verb),
                by=who.principal.subject, reason=body.reason,
            )  # fmt: skip
            call = who.gateway.skip_step if verb == "skip" else who.gateway.cancel_step
            obj = f"{action.execution_id}/{action.step}:{verb}"
            async with who.audit(Action.EXECUTIONS_CONTROL, obj=obj):
                return _execution(await call(action))

        return await self._answer(grpc_context, pb.ExecutionReply(), work)

    async def _control(
        self, context: Any, execution_id: str, what: str
    ) -> tuple[Caller, op.ExecutionRef]:
        """The caller, who may control executions, and the execution they name.

        Raises: Unauthorized, RateLimited, Forbidden, InputInvalid.
        """
        who = await self._caller(context, Action.EXECUTIONS_CONTROL)
        return who, op.ExecutionRef(execution_id=check(execution_id, ID, "id", what))

    async def WatchExecution(
        self, request: pb.WatchExecutionRequest, grpc_context: Any
    ) -> AsyncGenerator[pb.ExecutionEvent, None]:
        """The execution's events after `cursor`, ending once it has ended.

        The stream holds a lease in its key's and tenant's open streams as REST's SSE and
        WebSocket streams do (RESOURCE_EXHAUSTED past `streams_per_key`/`_per_tenant`),
        given back however it ends. An error before the first event sets the status and
        raises `RpcFailed`: Serve carries a status set on the context of a stream only
        with an exception.
        """
        try:
            who = await self._caller(grpc_context, Action.EXECUTIONS_READ)
            check(request.id, ID, "id", "watch request")
            after = request.cursor or "0-0"
            if not STREAM_ID.match(after):
                raise InputInvalid("cursor", [f"{after!r} is not a stream id like '17-0'"])
            executions = who.tenant_services.executions
            await asyncio.to_thread(executions.load, request.id)  # NotFound before streaming
            lease = await stream_lease(who)  # as REST's streams take theirs
            try:
                async for frame in execution_frames(who, request.id, after):
                    await lease.renew()
                    if frame is not None:
                        event_id, event = frame
                        kind = str(event.get("type", ""))
                        yield pb.ExecutionEvent(id=event_id, type=kind, event=to_struct(event))
            finally:  # ended, failed, or the client went away
                await lease.release()
        except DafnckError as exc:
            _fail(grpc_context, exc)
            raise RpcFailed(exc.message) from None


__all__ = ["SERVICER_FUNCTIONS", "STATUS", "GrpcApi", "RpcFailed", "status_of", "to_struct"]
