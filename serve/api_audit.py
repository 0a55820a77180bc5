"""The tenant's audit trail for admins (`audit:read`), and the audit of failed validations.

`GET /v1/audit` pages through the entries of every principal of the caller's tenant, oldest
first, filtered by principal, action, outcome and time; `GET /v1/audit/unauthenticated`
gives the per-minute counters of failed authentications (401) naming a key of the tenant.
A mutating call whose input fails validation (422 before the route runs) is recorded as
"invalid", with the caller who made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError

from cluster.auth.audit import MAX_PAGE, AuditFilter, UnauthenticatedCount
from cluster.auth.models import Action, AuditPage
from cluster.errors import DafnckError
from serve.deps import Caller, allowed

#: Times past the year 9999 are refused at the edge rather than overflowing later.
MAX_UNIX_S = 253_402_300_799

router = APIRouter(tags=["audit"])
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The action of an entry for a mutating call refused by validation before its route ran.
INVALID_ACTION = "input:invalid"


@router.get("/v1/audit", response_model=AuditPage)
async def list_audit(
    principal: str | None = Query(default=None, max_length=300, description="Subject"),
    action: str | None = Query(default=None, max_length=100, description="e.g. keys:manage"),
    outcome: Literal["ok", "denied", "failed", "invalid"] | None = None,
    since: float | None = Query(
        default=None, ge=0, le=MAX_UNIX_S, allow_inf_nan=False, description="Unix time, seconds"
    ),
    until: float | None = Query(
        default=None, ge=0, le=MAX_UNIX_S, allow_inf_nan=False, description="Unix time, seconds"
    ),
    cursor: str | None = Query(default=None, max_length=80, description="`next_cursor`"),
    limit: int = Query(default=100, ge=1, le=MAX_PAGE),
    who: Caller = Depends(allowed(Action.AUDIT_READ)),  # noqa: B008
) -> AuditPage:
    """The tenant's audit entries, oldest first. Raises: InputInvalid (cursor, since > until)."""
    where = AuditFilter(principal, action, outcome, since, until)
    audit = who.services.security.audit
    return await asyncio.to_thread(audit.list, who.tenant, cursor, limit, where)


@router.get("/v1/audit/unauthenticated", response_model=list[UnauthenticatedCount])
async def list_unauthenticated(
    since: float | None = Query(
        default=None, ge=0, le=MAX_UNIX_S, allow_inf_nan=False, description="Unix time, seconds"
    ),
    until: float | None = Query(
        default=None, ge=0, le=MAX_UNIX_S, allow_inf_nan=False, description="Unix time, seconds"
    ),
    who: Caller = Depends(allowed(Action.AUDIT_READ)),  # noqa: B008
) -> list[UnauthenticatedCount]:
    """Failed authentications with a key of this tenant, counted per minute and source."""
    audit = who.services.security.audit
    return await asyncio.to_thread(audit.unauthenticated, who.tenant, since, until)


def install(app: FastAPI) -> None:
    """Record a mutating call's failed validation, then answer as before (422)."""
    answer = app.exception_handlers[RequestValidationError]

    async def audited_invalid(request: Request, exc: Exception) -> Any:
        who = getattr(request.state, "caller", None)
        if isinstance(who, Caller) and request.method in _MUTATING:
            assert isinstance(exc, RequestValidationError)
            fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
            detail = f"invalid fields: {', '.join(fields)}"[:500]
            target = f"{request.method} {request.url.path}"[:300]
            with contextlib.suppress(DafnckError):  # a store that is down: still the 422
                await who.services.gate.record(
                    who.principal, INVALID_ACTION, target, who.request_id, "invalid", detail
                )
        response = answer(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(RequestValidationError, audited_invalid)


__all__ = ["INVALID_ACTION", "install", "router"]
