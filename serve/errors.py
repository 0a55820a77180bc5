"""One mapping from errors to HTTP answers: a JSON body naming the problem, never a trace.

Bodies look like `{"error": {"type": "InputInvalid", "message": "...", "problems": [...]}}`;
a `RateLimited` or `QueueFull` answer carries `Retry-After`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.errors import DafnckError, ErrorInfo, QueueFull, QuotaExceeded, RateLimited

log = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorInfo


_WHY = {
    400: "Bad input or settings",
    401: "No credential, or one that is invalid, expired or revoked",
    403: "The caller's role does not allow this",
    404: "Not found (also another tenant's ids)",
    409: "The state does not allow this, or an Idempotency-Key reused with another body",
    413: "The body is larger than 1 MiB",
    422: "The input is invalid; every problem is listed",
    429: "A rate limit, a full queue or a tenant quota (the body names the limit)",
    503: "The store or the cluster is unavailable (retryable)",
    507: "A storage quota of the tenant (the body names it), or the store is full (retryable)",
}
#: Error answers every route may give, declared in the OpenAPI document with their body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why} for code, why in _WHY.items()
}


def error_body(type_: str, message: str, **details: Any) -> dict[str, Any]:
    """The body of an error answer for a problem no `DafnckError` names."""
    info = ErrorInfo(type=type_, message=message, **details)
    return ErrorResponse(error=info).model_dump(mode="json")


def _platform(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DafnckError)
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    elif isinstance(exc, QueueFull):
        headers["Retry-After"] = "1"
    # A quota's 507 is the caller's to act on, not a server fault.
    known = exc.status_code < 500 or exc.retryable or isinstance(exc, QuotaExceeded)
    status = exc.status_code if known else 500
    if status >= 500 and not exc.retryable:
        log.error("request failed: %s", exc.message)
    body = ErrorResponse(error=exc.info()).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
    ]
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    return JSONResponse(error_body("InputInvalid", message, problems=problems), status_code=422)


def _too_deep(request: Request, exc: Exception) -> JSONResponse:
    """A body nested past what the parser recurses into (`[[[[...`): bad input, not a fault."""
    log.warning("%s %s: input nested too deeply to read", request.method, request.url.path)
    problem = "nested too deeply to read (arrays or objects inside each other)"
    body = error_body(
        "InputInvalid", f"body: {problem}", problems=[{"field": "body", "problem": problem}]
    )
    return JSONResponse(body, status_code=400)


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        error_body("HTTPError", str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body("InternalError", "the request failed; see the server log"), status_code=500
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(DafnckError, _platform)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RecursionError, _too_deep)
    app.add_exception_handler(Exception, _unexpected)
