"""What LLM calls cost: the tenant's token and cost totals (per model, or one workflow's),
and one execution's (per step); and the execution's journalled tool calls. Read-only, for
every role that reads executions."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query

from actors.contract import ExecutionRef
from actors.llm_journal import execution_tool_calls
from cluster.auth.models import Action
from cluster.llm.usage import UsageLedger
from serve.api_executions import ExecutionId
from serve.deps import Caller, allowed
from workflows.spec import NAME

router = APIRouter(tags=["usage"])


def _ledger(caller: Caller) -> UsageLedger:
    return UsageLedger(caller.services.store.for_tenant(caller.tenant))


@router.get("/v1/usage")
async def tenant_usage(
    workflow: str | None = Query(default=None, pattern=NAME, description="One workflow's"),
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """Tokens, cost and paid calls of the tenant (with each model's), or of one workflow."""
    ledger = _ledger(caller)
    if workflow is not None:
        report = await asyncio.to_thread(ledger.workflow_report, workflow)
        return {"tenant": caller.tenant, "workflow": workflow, **report}
    return {"tenant": caller.tenant, **await asyncio.to_thread(ledger.tenant_report)}


@router.get("/v1/executions/{execution_id}/usage")
async def execution_usage(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """Tokens, cost and paid calls of one execution, with each step's. Raises: NotFound."""
    execution = await caller.gateway.get_execution_status(ExecutionRef(execution_id=execution_id))
    report = await asyncio.to_thread(_ledger(caller).execution_report, execution_id)
    return {"execution_id": execution.id, "workflow": execution.workflow, **report}


@router.get("/v1/executions/{execution_id}/tool-calls")
async def execution_tool_calls_route(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """Each step's journalled tool calls: name, arguments, status (`started`, `succeeded`,
    `failed`, `may_have_run`), result or error. Raises: NotFound."""
    execution = await caller.gateway.get_execution_status(ExecutionRef(execution_id=execution_id))
    store = caller.services.store.for_tenant(caller.tenant)
    steps = await asyncio.to_thread(execution_tool_calls, store, execution.id)
    return {"execution_id": execution.id, "steps": steps}
