"""The web dashboard: its static files at `/`, and the few read-only routes its pages need.

The pages are plain ES modules in `serve/dashboard/` (no build step), served by a
`StaticFiles` mount added after every API route, so `/v1`, `/docs`, `/metrics`, `/healthz`
and `/readyz` always win; paths under those prefixes that match no route stay JSON 404s.
The routes here only read: who the caller is (`/v1/me`, so the pages can hide what the
role may not do), a cluster overview, and a workflow's step graph.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path as FilePath
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketClose

from actors.contract import MonitorHealth
from actors.health import PoolHealth, pools_of
from cluster.auth.models import PERMISSIONS, Action
from serve.deps import Caller, allowed, caller
from workflows.execution import ExecutionStatus
from workflows.spec import NAME, WorkflowSpec
from workflows.validate import effective_needs

router = APIRouter(tags=["dashboard"])

#: The dashboard's files, inside the package (package-data) so every Serve replica has them.
STATIC_DIR = FilePath(__file__).parent / "dashboard"
#: First path segments that belong to the API: never answered with a dashboard file.
API_PREFIXES = frozenset({"v1", "docs", "openapi.json", "metrics", "healthz", "readyz"})
#: The overview counts executions among this many of the newest.
RECENT_EXECUTIONS = 1000
#: The pages load only their own files and talk only to their own origin; no page may
#: frame the control panel (clickjacking). Inline style attributes position the timeline.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: Where the trace route lives; the pages ask for spans only when it exists.
TRACE_ROUTE = "/v1/executions/{execution_id}/trace"


@router.get("/v1/me")
async def me(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:  # noqa: B008
    """The caller: subject, tenant, role, the actions it may take, and optional API features."""
    paths = request.app.openapi().get("paths", {})  # built once, then cached by FastAPI
    principal = who.principal
    return {
        "subject": principal.subject,
        "tenant": principal.tenant,
        "role": principal.role.value,
        "kind": principal.kind,
        "permissions": sorted(a.value for a in PERMISSIONS[principal.role]),
        "features": {"trace": TRACE_ROUTE in paths},
    }


def _pool_totals(pools: dict[str, PoolHealth]) -> dict[str, float]:
    """Tasks done, failed and in flight, and seconds spent running them, over every replica."""
    reports = [r for pool in pools.values() for r in pool.replicas.values()]
    return {
        "completed": float(sum(r.completed or 0 for r in reports)),
        "failed": float(sum(r.failed or 0 for r in reports)),
        "in_flight": float(sum(r.in_flight or 0 for r in reports)),
        "busy_s": float(sum(r.busy_s or 0 for r in reports)),
    }


@router.get("/v1/overview")
async def overview(
    who: Caller = Depends(allowed(Action.AGENTS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """The supervisor's health report (nodes, resources, system actors, pools), task totals
    (the pages turn two readings into tasks per second and latency) and, for roles that may
    read executions, their counts by status (None otherwise)."""
    reads_executions = Action.EXECUTIONS_READ in PERMISSIONS[who.principal.role]
    health, recent = await asyncio.gather(
        who.gateway.monitor_health(MonitorHealth()),
        asyncio.to_thread(who.tenant_services.executions.list_executions, RECENT_EXECUTIONS)
        if reads_executions
        else asyncio.sleep(0, result=[]),
    )  # fmt: skip
    counts = {status.value: 0 for status in ExecutionStatus}
    for execution in recent:
        counts[execution.status.value] += 1
    executions = {"counts": counts, "of_recent": len(recent)} if reads_executions else None
    return {
        **health,
        "at": time.time(),
        "tasks": _pool_totals(pools_of(health)),
        "executions": executions,
    }


@router.get("/v1/workflows/{name}/graph")
async def workflow_graph(
    name: str = Path(pattern=NAME),
    version: int | None = Query(default=None, ge=1),
    who: Caller = Depends(allowed(Action.WORKFLOWS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """The workflow's steps and every dependency (explicit `needs` and those its expressions
    imply), for drawing. Raises: NotFound."""
    found, raw = await asyncio.to_thread(who.tenant_services.executions.definition, name, version)
    spec = WorkflowSpec.model_validate(json.loads(raw))
    needs = effective_needs(spec)
    steps = [
        {
            "id": step.id,
            "uses": step.uses,
            "needs": sorted(needs[step.id]),
            "with": step.with_,
            "when": step.when,
            "for_each": step.for_each is not None,
            "approval": step.approval.model_dump(mode="json") if step.approval else None,
            "wait": step.wait.model_dump(mode="json") if step.wait else None,  # its signals
        }
        for step in spec.steps
    ]
    return {"name": name, "version": found, "steps": steps}


def _api_path(path: str) -> bool:
    return path.split("/", 1)[0] in API_PREFIXES


class DashboardFiles(StaticFiles):
    """`StaticFiles` that leaves the API's paths alone: they answer JSON 404, never a page."""

    #: The mount serving these files: named in the scope as a matched route is, so the
    #: metrics label pages and files "/" rather than "unmatched".
    mount: Mount | None = None

    async def get_response(self, path: str, scope: Scope) -> Response:
        if _api_path(path) or scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.update(SECURITY_HEADERS)
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _api_path(self.get_path(scope)):
            scope["route"] = self.mount
        if scope["type"] == "websocket":  # an unknown WebSocket path: refuse, as Starlette does
            await WebSocketClose()(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def install(app: FastAPI) -> None:
    """Mount the dashboard at `/`; call after every router is included, so routes win."""
    files = DashboardFiles(directory=STATIC_DIR, html=True)
    files.mount = Mount("/", app=files, name="dashboard")
    files.mount.path = "/"  # Mount keeps "" for "/"; the metrics' label says "/"
    app.router.routes.append(files.mount)
