"""An execution's spans from the built-in span store: the timeline of everything it did.

`GET /v1/executions/{id}/trace` answers every span of the traces that touched the
execution (the API request that started it, the supervisor's execution and step spans,
the replicas' task spans and the LLM and tool calls inside them) as JSON: ids in hex,
`parent_id` null for a root, times in epoch milliseconds. Spans arrive within a second or
so of ending (they are exported in batches) and expire after `trace_retention_s`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from cluster.auth.models import Action
from cluster.span_store import execution_spans
from serve.api_executions import ExecutionId
from serve.deps import Caller, allowed

router = APIRouter(prefix="/v1/executions", tags=["executions"])


@router.get("/{execution_id}/trace")
async def execution_trace(
    execution_id: str = ExecutionId,
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """The execution's spans, oldest first. Raises: NotFound (no such execution here)."""
    return await asyncio.to_thread(_trace, caller, execution_id)


def _trace(caller: Caller, execution_id: str) -> dict[str, Any]:
    store = caller.services.store
    spans = execution_spans(store.redis, caller.tenant, execution_id)
    if not spans:
        caller.tenant_services.executions.load(execution_id)  # NotFound for another tenant's
    trace_ids = sorted({s["trace_id"] for s in spans})
    return {"execution_id": execution_id, "trace_ids": trace_ids, "spans": spans}


__all__ = ["router"]
