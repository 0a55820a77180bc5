"""An execution's finer controls: send it a signal, cancel or skip one of its steps.

Each is one operation of the supervisor's contract (`actors.contract.SignalExecution`,
`StepAction`), awaited through the tenant's gateway and audited as the other control
routes. A signal's body is its payload (any JSON, bounded by the API's body limit); a step
that has already ended answers 409, another tenant's execution 404, and a signal name that
is not a lowercase word 422 naming `name`. `Idempotency-Key` applies as on every POST.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Response
from fastapi.responses import JSONResponse

from actors.contract import SignalExecution, StepAction
from cluster.auth.models import Action
from serve.api_executions import DecisionRequest, ExecutionId, StepKey, execution_json
from serve.deps import Caller, allowed
from workflows.execution import Execution
from workflows.spec_waits import SIGNAL

router = APIRouter(prefix="/v1/executions", tags=["executions"])

SignalName = Path(pattern=SIGNAL, max_length=63, description="a lowercase word, as in `wait`")


@router.post("/{execution_id}/signals/{name}", response_model=Execution)
async def signal_execution(
    execution_id: str = ExecutionId,
    name: str = SignalName,
    payload: Any = Body(default=None),  # noqa: B008
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """Send signal `name`: a step waiting for it (`wait: {signal: name}`) takes the body
    as its output; if none waits yet, it is kept for the first that will.

    Raises: NotFound, Conflict (the execution has ended, or keeps too many signals).
    """
    request = SignalExecution(execution_id=execution_id, name=name, payload=payload)
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=f"{execution_id}/signal:{name}"):
        return JSONResponse(execution_json(await caller.gateway.signal_execution(request)))


@router.post("/{execution_id}/steps/{step}/cancel", response_model=Execution)
async def cancel_step(
    execution_id: str = ExecutionId,
    step: str = StepKey,
    body: DecisionRequest | None = Body(default=None),  # noqa: B008
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """Cancel one step (its running work too); the rest of the execution goes on, the
    steps after it seeing it as failed. Raises: NotFound, Conflict (the step has ended)."""
    action = _action(caller, execution_id, step, body)
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=f"{execution_id}/{step}:cancel"):
        return JSONResponse(execution_json(await caller.gateway.cancel_step(action)))


@router.post("/{execution_id}/steps/{step}/skip", response_model=Execution)
async def skip_step(
    execution_id: str = ExecutionId,
    step: str = StepKey,
    body: DecisionRequest | None = Body(default=None),  # noqa: B008
    caller: Caller = Depends(allowed(Action.EXECUTIONS_CONTROL)),  # noqa: B008
) -> Response:
    """Skip one step, as if its `when` were false (running work is cancelled).
    Raises: NotFound, Conflict (the step has ended)."""
    action = _action(caller, execution_id, step, body)
    async with caller.audit(Action.EXECUTIONS_CONTROL, obj=f"{execution_id}/{step}:skip"):
        return JSONResponse(execution_json(await caller.gateway.skip_step(action)))


def _action(
    caller: Caller, execution_id: str, step: str, body: DecisionRequest | None
) -> StepAction:
    return StepAction(
        execution_id=execution_id, step=step, by=caller.principal.subject,
        reason=body.reason if body else "",
    )  # fmt: skip
