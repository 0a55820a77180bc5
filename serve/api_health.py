"""Liveness and readiness, as Kubernetes expects them: `/healthz` says the process answers;
`/readyz` says it can serve (the store answers). Neither needs a credential."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cluster.errors import DafnckError
from serve.deps import connect_services

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Any:
    try:
        connect_services(request.app).store.ping()
    except DafnckError as exc:
        return JSONResponse({"status": "unavailable", "reason": exc.message}, status_code=503)
    return {"status": "ready"}
