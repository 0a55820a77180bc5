"""Executions: start one (202 and its id), list, get, control, approve or reject a gated
step, and page through its event log.

Control calls are the supervisor's operations (`actors.contract`), awaited through the
tenant's gateway; a call that does not apply to the execution's state (pausing a finished
one, approving a step not at its gate) answers 409. Another tenant's execution id is simply
not found (404): each tenant has its own store and supervisor.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.contract import (
    CancelExecution,
    DecideStep,
    ExecuteWorkflow,
    ExecutionRef,
    WaitExecution,
)
from actors.models import new_id
from actors.webhooks import WebhookSpec, check_webhook, register_webhook
from cluster.auth.models import Action
from cluster.errors import Conflict, NotFound
from cluster.outbound import outbound_policy
from cluster.retention import TERMINAL, Purger, PurgeReport, check_statuses
from serve.deps import Caller, allowed
from serve.patterns import ID, STEP_KEY, STREAM_ID  # STREAM_ID: the cursor of event pages
from workflows.execution import Event, Execution, ExecutionStatus
from workflows.spec import NAME
from workflows.tables import execution_view

router = APIRouter(prefix="/v1/executions", tags=["executions"])


ExecutionId = Path(min_length=1, max_length=64, pattern=ID)
_EXECUTION_ID = re.compile(ID)
#: A step id, or one item of a for_each step (`analyse[3]`), which a budget gate may hold.
StepKey = Path(pattern=STEP_KEY, max_length=72)


class ExecutionRequest(BaseModel):
    """Start an execution of a workflow (its latest version unless `version` is given)."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(pattern=NAME)
    inputs: dict[str, Any] = {}
    version: int | None = Field(default=None, ge=1)
    #: Called (signed, retried) when the execution ends; see `actors.webhooks`.
    webhook: WebhookSpec | None = None


class DecisionRequest(BaseModel):
    """Why a step is approved or rejected, or an execution cancelled; kept in its record."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class ExecutionsResponse(BaseModel):
    executions: list[Execution]


class EventEntry(BaseModel):
    #: The event's stream id: the cursor to resume after it.
    id: str
    event: Event


class EventsResponse(BaseModel):
    events: list[EventEntry]
    next_cursor: str | None


def _answer(
    execution: Execution, status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The execution's view, sent as built: FastAPI would validate it again against
    `Execution` (the documented `response_model`), costing as much again for a large one."""
    return JSONResponse(execution_json(execution), status_code, headers)


def execution_json(execution: Execution) -> dict[str, Any]:
    """The execution as the API shows it: each Arrow table in its outputs summarised
    (`{"$table": {rows, columns, stored_at}}`, see `workflows.tables`), never sent whole."""
    return execution_view(execution)


@router.post(
    "",
    status_code=202,
    response_model=Execution,
    responses={200: {"model": Execution, "description": "with ?wait=true: the ended execution"}},
)
async def start_execution(
    request: ExecutionRequest,
    wait: bool = Query(default=False, description="Wait for the execution to end"),
    timeout_s: float = Query(default=60.0, gt=0, le=3600),
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """Start the workflow; 202 with the execution (200 once ended, with `?wait=true`).

    Raises: NotFound (no such workflow or version), InputInvalid (inputs of the wrong type),
    OutboundRefused (a webhook URL at an address the platform does not allow).
    """
    execution_id = new_id()
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=request.workflow):
        if request.webhook:
            outbound = outbound_policy(caller.services.settings)
            await asyncio.to_thread(check_webhook, request.webhook, outbound)
            store = caller.services.store.for_tenant(caller.tenant)
            await asyncio.to_thread(register_webhook, store, execution_id, request.webhook)
        execution = await caller.gateway.execute_workflow(
            ExecuteWorkflow(
                workflow=request.workflow, inputs=request.inputs, version=request.version,
                execution_id=execution_id,
            )
        )  # fmt: skip
    location = {"Location": f"/v1/executions/{execution.id}"}
    if wait:
        execution = await _wait(caller, execution.id, timeout_s)
    return _answer(execution, 200 if wait and execution.status.terminal else 202, location)


async def _wait(caller: Caller, execution_id: str, timeout_s: float) -> Execution:
    """The execution once it ended, or as it is when `timeout_s` has passed."""
    return await caller.gateway.wait_execution(
        WaitExecution(execution_id=execution_id, timeout_s=timeout_s)
    )


class PurgeRequest(BaseModel):
    """Which finished executions to delete: the ones named, or those ended `older_than_s`
    ago (or both: the named ones, if that old). At least one of the two is required."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default=[], max_length=10_000)
    older_than_s: float | None = Field(default=None, ge=0, le=100 * 365 * 86_400)
    statuses: list[ExecutionStatus] = [
        ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED,
    ]  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> PurgeRequest:
        bad = [i for i in self.ids if not _EXECUTION_ID.match(i)]
        if bad:
            raise ValueError(f"ids: {bad[:5]!r} are not execution ids ({_EXECUTION_ID.pattern})")
        if not self.ids and self.older_than_s is None:
            raise ValueError("give ids, older_than_s or both: an empty request purges nothing")
        check_statuses(self.statuses)
        return self


class PurgeResponse(BaseModel):
    purged: list[str]
    missing: list[str]
    #: Ids not purged because the execution has not ended (id -> its status).
    active: dict[str, str]
    #: Ids not purged: another status than asked for, or not that old.
    kept: list[str]
    blobs_deleted: int
    journal_keys_deleted: int


@router.post("/purge", response_model=PurgeResponse)
async def purge_executions(
    request: PurgeRequest,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_PURGE)),  # noqa: B008
) -> dict[str, Any]:
    """Delete finished executions with their events, outputs, blobs, journals and spans.

    Executions that have not ended are never purged: they are listed under `active`.
    """
    obj = ",".join(request.ids)[:200] or f"older_than_s={request.older_than_s:g}"
    async with caller.audit(Action.EXECUTIONS_PURGE, obj=obj):
        report = await _purge(caller, request.ids, request.older_than_s, request.statuses)
    return report.as_dict()


@router.delete("/{execution_id}", status_code=204)
async def delete_execution(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_PURGE)),  # noqa: B008
) -> Response:
    """Purge one finished execution. Raises: NotFound, Conflict (it has not ended)."""
    async with caller.audit(Action.EXECUTIONS_PURGE, obj=execution_id):
        report = await _purge(caller, [execution_id], None, list(TERMINAL))
    if report.missing:
        raise NotFound(f"execution {execution_id!r} does not exist")
    if report.active:
        raise Conflict(
            f"execution {execution_id!r} is {report.active[execution_id]}: only finished "
            "executions are purged; cancel it first"
        )
    return Response(status_code=204)


async def _purge(
    caller: Caller, ids: list[str], older_than_s: float | None, statuses: list[Any]
) -> PurgeReport:
    executions = caller.tenant_services.executions
    settings = caller.services.settings.retention.for_tenant(caller.tenant)
    purger = Purger(executions.store, executions.blobs.dir, settings.usage_days)
    chosen = [str(s) for s in statuses]
    cutoff = None if older_than_s is None else time.time() - older_than_s
    if not ids and cutoff is not None:
        ids = await purger.expired(cutoff, chosen)
    return await purger.purge(ids, cutoff=cutoff, statuses=chosen, batch=settings.batch)


@router.get("", response_model=ExecutionsResponse)
async def list_executions(
    status: ExecutionStatus | None = None,
    limit: int = Query(default=50, ge=1, le=1000),
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> Response:
    """The newest executions first (without their per-step state)."""
    executions = caller.tenant_services.executions
    found = await asyncio.to_thread(executions.list_executions, limit, status)
    return JSONResponse({"executions": [execution_json(e) for e in found]})


@router.get("/{execution_id}", response_model=Execution)
async def get_execution(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> Response:
    """The execution with every step's state. Raises: NotFound."""
    ref = ExecutionRef(execution_id=execution_id)
    return _answer(await caller.gateway.get_execution_status(ref))


@router.post("/{execution_id}/pause", response_model=Execution)
async def pause_execution(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """No new step starts; running ones finish. Raises: NotFound, Conflict (not running)."""
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=execution_id):
        done = await caller.gateway.pause_workflow(ExecutionRef(execution_id=execution_id))
    return _answer(done)


@router.post("/{execution_id}/resume", response_model=Execution)
async def resume_execution(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """Raises: NotFound, Conflict (not paused)."""
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=execution_id):
        done = await caller.gateway.resume_workflow(ExecutionRef(execution_id=execution_id))
    return _answer(done)


@router.post("/{execution_id}/cancel", response_model=Execution)
async def cancel_execution(
    execution_id: str = ExecutionId,
    body: DecisionRequest | None = Body(default=None),  # noqa: B008
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """Cancel running steps and end the execution. Raises: NotFound, Conflict (ended)."""
    cancel = CancelExecution(
        execution_id=execution_id, by=caller.principal.subject, reason=body.reason if body else ""
    )
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=execution_id):
        return _answer(await caller.gateway.cancel_workflow(cancel))


@router.post("/{execution_id}/retry", response_model=Execution)
async def retry_execution(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """Run a failed or cancelled execution again from the steps that did not succeed.

    Raises: NotFound, Conflict (neither failed nor cancelled).
    """
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=execution_id):
        done = await caller.gateway.retry_workflow(ExecutionRef(execution_id=execution_id))
    return _answer(done)


@router.post("/{execution_id}/steps/{step}/approve", response_model=Execution)
async def approve_step(
    execution_id: str = ExecutionId,
    step: str = StepKey,
    body: DecisionRequest | None = Body(default=None),  # noqa: B008
    caller: Caller = Depends(allowed(Action.EXECUTIONS_APPROVE)),  # noqa: B008
) -> Response:
    """Let a gated step run; the caller's subject and the reason are recorded.

    Raises: NotFound, Conflict (the step is not waiting for approval).
    """
    return await _decide(caller, execution_id, step, True, body)


@router.post("/{execution_id}/steps/{step}/reject", response_model=Execution)
async def reject_step(
    execution_id: str = ExecutionId,
    step: str = StepKey,
    body: DecisionRequest | None = Body(default=None),  # noqa: B008
    caller: Caller = Depends(allowed(Action.EXECUTIONS_APPROVE)),  # noqa: B008
) -> Response:
    """Refuse a gated step. Raises: NotFound, Conflict (not waiting for approval)."""
    return await _decide(caller, execution_id, step, False, body)


async def _decide(
    caller: Caller, execution_id: str, step: str, approve: bool, body: DecisionRequest | None
) -> Response:
    decision = DecideStep(
        execution_id=execution_id, step=step, approved=approve, by=caller.principal.subject,
        reason=body.reason if body else "",
    )  # fmt: skip
    async with caller.audit(Action.EXECUTIONS_APPROVE, obj=f"{execution_id}/{step}"):
        return _answer(await caller.gateway.decide_step(decision))


@router.get("/{execution_id}/events", response_model=EventsResponse)
async def execution_events(
    execution_id: str = ExecutionId,
    cursor: str = Query(default="0-0", pattern=STREAM_ID, description="`next_cursor` of a page"),
    limit: int = Query(default=100, ge=1, le=1000),
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """A page of the execution's event log, oldest first, after `cursor`. Raises: NotFound."""
    executions = caller.tenant_services.executions

    def page() -> list[Any]:
        executions.load(execution_id)  # NotFound for unknown (or another tenant's) ids
        return executions.events(execution_id, cursor, count=limit + 1)

    rows = await asyncio.to_thread(page)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "events": [{"id": i, "event": e.model_dump(mode="json")} for i, e in rows],
        "next_cursor": rows[-1][0] if more else None,
    }
