"""Tasks over HTTP: submit and wait (200 with the result), or submit and poll (202, an id
and `Location`); get; cancel.

An asynchronous task is recorded in Redis (`actors.task_records`) and run by this replica
in an asyncio task; its result is written to the record when it ends. Cancelling marks the
record and stops the work wherever it runs (`serve.task_runs`): the router cancels it on the
agent's replica and gives back its slot.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from actors.models import Task, TaskContext, TaskResult
from actors.task_records import TaskRecords, TaskStatus
from cluster.auth.models import Action
from cluster.errors import DafnckError
from serve.deps import Caller, allowed
from serve.task_runs import cancel_here, run_cancellable
from serve.tenants import TenantServices

log = logging.getLogger(__name__)
router = APIRouter(tags=["tasks"])
#: Tasks this replica runs, kept referenced so the loop does not drop them.
_RUNNING: set[asyncio.Task[None]] = set()


async def _run_recorded(tenant: TenantServices, records: TaskRecords, task: Task) -> None:
    try:
        await records.set_running(task.id)
        result = await run_cancellable(
            (records.store.tenant, "task", task.id),
            tenant.router.run_async(task),
            lambda: _cancelled(records, task.id),
        )
    except DafnckError as exc:
        result = TaskResult(task_id=task.id, status="failed", error=exc.info())
    except Exception as exc:
        log.exception("task %s failed in the API replica", task.id, extra={"task_id": task.id})
        error = {"type": type(exc).__name__, "message": "the task failed; see the server log"}
        result = TaskResult(task_id=task.id, status="failed", error=error)
    await records.finish(task.id, result)


class TaskAccepted(BaseModel):
    id: str
    status: Literal["pending"]
    location: str


class TaskRecordResponse(BaseModel):
    """A task's record: its status, the task, and its result once it ended."""

    id: str
    status: TaskStatus
    task: Task
    result: TaskResult | None
    created_at: float
    updated_at: float


def _owned(task: Task, who: Caller) -> Task:
    """The task in a fresh context: the tenant from the credential and the caller's trace
    parent, nothing else. Execution, step, attempt and budget fields are the workflow
    engine's: a caller who set them would read or poison another execution's LLM replies
    and tool journal, or skip its budgets."""
    context = TaskContext(tenant=who.tenant, traceparent=task.context.traceparent)
    return task.model_copy(update={"context": context})


@router.post(
    "/v1/tasks",
    status_code=202,
    response_model=TaskAccepted,
    responses={200: {"model": TaskResult, "description": "with ?wait=true: the result"}},
)
async def submit_task(
    task: Task,
    wait: bool = False,
    who: Caller = Depends(allowed(Action.TASKS_RUN)),  # noqa: B008
) -> Any:
    """Run a task: `?wait=true` answers with its result; otherwise 202 and its id."""
    result = await start_task(who, task, wait)
    if result is not None:
        return JSONResponse(result.model_dump(mode="json"), status_code=200)
    location = f"/v1/tasks/{task.id}"
    return JSONResponse(
        {"id": task.id, "status": "pending", "location": location},
        status_code=202,
        headers={"Location": location},
    )


async def start_task(who: Caller, task: Task, wait: bool) -> TaskResult | None:
    """Audited: run the task in the caller's tenant and return its result (`wait`), or
    record it and run it in the background (None). REST and gRPC both submit here."""
    task = _owned(task, who)
    tenant = await who.services.tenant(who.tenant)
    async with who.audit(Action.TASKS_RUN, obj=f"task:{task.id}"):
        if wait:
            return await tenant.router.run_async(task)
        quotas = tenant.settings.quotas.for_tenant(tenant.settings.tenant)
        records = TaskRecords(tenant.store, quotas)  # task_records
        await records.create(task)
        runner = asyncio.create_task(_run_recorded(tenant, records, task))
        _RUNNING.add(runner)
        runner.add_done_callback(_RUNNING.discard)
    return None


@router.get("/v1/tasks/{task_id}", response_model=TaskRecordResponse)
async def get_task(
    task_id: str,
    who: Caller = Depends(allowed(Action.TASKS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """The task's record: status, the task, and its result once it ended. 404 when unknown."""
    return await TaskRecords(who.services.store.for_tenant(who.tenant)).get(task_id)


@router.post("/v1/tasks/{task_id}/cancel", response_model=TaskRecordResponse)
async def cancel_task(
    task_id: str,
    response: Response,
    who: Caller = Depends(allowed(Action.TASKS_RUN)),  # noqa: B008
) -> dict[str, Any]:
    """Cancel a pending or running task (409 once it has ended)."""
    records = TaskRecords(who.services.store.for_tenant(who.tenant))
    async with who.audit(Action.TASKS_RUN, obj=f"task:{task_id}"):
        record = await records.cancel(task_id)
    cancel_here((who.tenant, "task", task_id))  # elsewhere: its replica sees the record
    return record


async def _cancelled(records: TaskRecords, task_id: str) -> bool:
    try:
        return (await records.get(task_id))["status"] == "cancelled"
    except DafnckError:  # the record expired or was deleted: nobody waits for it
        return True
