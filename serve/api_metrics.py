"""`/metrics` in Prometheus text, and the middleware that counts and traces requests.

Every `dafnck_*` metric is defined in `cluster.metrics`; this replica serves its own values
(its requests, the tasks it routed, its cache). Actors' metrics (pools, executions,
replicas) go through `ray.util.metrics` to Ray's Prometheus export. Labels come from bounded
sets only: the method, the route *template* (`/v1/agents/{agent_id}`, never the raw path;
unmatched paths are "unmatched") and the status code. Each request is a SERVER span named
after its route template, child of an incoming `traceparent` header.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import generate_latest as _generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster import tracing
from cluster.errors import Forbidden, Unauthorized
from cluster.logs import log_context
from cluster.metrics import HTTP_REQUESTS, HTTP_SECONDS, REGISTRY, sync
from serve.deps import header_credential

#: The metrics this module records (kept as names for callers of the old module).
REQUESTS, LATENCY = HTTP_REQUESTS, HTTP_SECONDS
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

router = APIRouter(tags=["metrics"])


def scraper(request: Request) -> None:
    """The platform's scrape credential (`metrics_token`), compared in constant time: the
    series span every tenant, so no tenant key or token reads them, an admin's neither.

    Raises: Forbidden (no `metrics_token` set, or another credential), Unauthorized (none).
    """
    expected = request.app.state.settings.metrics_token
    if expected is None:
        raise Forbidden("/metrics is off: set `metrics_token` and scrape with it as the bearer")
    given = header_credential(request.headers)
    if not given:
        raise Unauthorized("no credential: scrape with 'Authorization: Bearer <metrics_token>'")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Forbidden("only the scrape credential (`metrics_token`) reads /metrics")


@router.get("/metrics", response_class=Response, dependencies=[Depends(scraper)])
async def metrics() -> Response:
    """Prometheus text exposition, for the platform's scraper only (`metrics_token`)."""
    sync()
    return Response(_generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def route_template(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def install(app: FastAPI) -> None:
    """Count and trace every request by route template and status (outermost, so 401s
    count too)."""
    app.add_middleware(RequestMeter)


class RequestMeter:
    """Pure ASGI middleware: the request's ids, its SERVER span, its count and latency.

    (Starlette's `@app.middleware("http")` would run each request through a task group and
    a memory stream of its own: a cost on every request of the API.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        headers = Headers(scope=scope)
        # Serve's proxy sets X-Request-ID (keeping a client's) and answers it: it is kept
        # as the client's id; the audit and the log lines use the server's own.
        given = headers.get("x-request-id")
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                answer = MutableHeaders(scope=message)
                if not given:
                    answer["x-request-id"] = request_id
                answer["x-server-request-id"] = request_id
            await send(message)

        with (
            log_context(request_id=request_id, client_request_id=given),
            tracing.span(f"HTTP {method}", parent=headers.get("traceparent"),
                         kind=SpanKind.SERVER,
                         attributes={"http.request.method": method,
                                     "dafnck.request_id": request_id}) as span,
        ):  # fmt: skip
            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                route = getattr(scope.get("route"), "path", None)
                route = route if isinstance(route, str) else "unmatched"
                HTTP_REQUESTS.inc(method=method, route=route, status=str(status))
                HTTP_SECONDS.observe(time.perf_counter() - started, method=method, route=route)
                _name(span, method, route, status)


def _name(span: Any, method: str, route: str, status: int) -> None:
    if span.is_recording():
        span.update_name(f"HTTP {method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            tracing.mark_error(span, str(status))


__all__ = ["LATENCY", "REGISTRY", "REQUESTS", "install", "route_template", "router"]
