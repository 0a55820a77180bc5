"""`/metrics` in Prometheus text, and the middleware that counts requests.

Labels come from bounded sets only: the method, the route *template* (`/v1/agents/{agent_id}`,
never the raw path; unmatched paths are "unmatched") and the status code. Counts are per
API replica; Prometheus sums replicas when it scrapes each (or through Serve's own metrics).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest

from serve.deps import Caller, caller

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "dafnck_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "dafnck_http_request_duration_seconds",
    "HTTP request latency, by method and route template.",
    ["method", "route"],
    registry=REGISTRY,
)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(who: Caller = Depends(caller)) -> Response:  # noqa: B008
    """Prometheus text exposition; any authenticated caller may scrape."""
    return Response(_generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def route_template(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def install(app: FastAPI) -> None:
    """Count every request by route template and status (outermost, so 401s count too)."""

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            method = request.method if request.method in _METHODS else "OTHER"
            route = route_template(request)
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)


__all__ = ["LATENCY", "REGISTRY", "REQUESTS", "install", "router"]
