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
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.errors import DafnckError, QueueFull, RateLimited

log = logging.getLogger(__name__)


def error_body(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, **extra}}


def _platform(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DafnckError)
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    elif isinstance(exc, QueueFull):
        headers["Retry-After"] = "1"
    status = exc.status_code if exc.status_code < 500 or exc.retryable else 500
    if status >= 500 and not exc.retryable:
        log.error("request failed: %s", exc.message)
    return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)


def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
    ]
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    return JSONResponse(error_body("InputInvalid", message, problems=problems), status_code=422)


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
    app.add_exception_handler(Exception, _unexpected)
