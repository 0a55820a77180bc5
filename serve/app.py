"""The FastAPI application behind the Serve ingress: routers, errors, limits and CORS.

Routers are plain `APIRouter`s in `serve/api_*.py`; each depends on `serve.deps` for the
caller and the tenant's services (connected on first use by `serve.deps.connect_services`).
Nothing imports this module but the deployment that serves it.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cluster import extras, telemetry
from cluster.settings import Settings
from serve import errors
from serve.body_limit import BodyLimit

#: Modules with a `router`, in the order their routes appear in the OpenAPI document.
ROUTER_MODULES = [
    "serve.api_health",
    "serve.api_auth",
    "serve.api_agents",
    "serve.api_tasks",
    "serve.api_metrics",
    "serve.api_workflows",
    "serve.api_executions",
    "serve.api_execution_controls",
    "serve.api_usage",
    "serve.api_streams",
    "serve.api_messages",
    "serve.api_data",
    "serve.api_a2a",
    "serve.api_webhooks",
    "serve.api_audit",
    "serve.api_traces",
    "serve.api_dashboard",
]
#: The default of `Settings.max_body_bytes`: larger bodies get 413 before they are parsed.
MAX_BODY_BYTES = 1024 * 1024


def build_app(
    settings: Settings,
    *,
    cors_origins: list[str] | None = None,
    trusted_hosts: list[str] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="DafnckMachine", version="0.1.0", docs_url="/docs", openapi_url="/openapi.json"
    )
    app.state.settings = settings
    app.state.services = None  # connected lazily, on the first request that needs them
    telemetry.setup_process(settings, "api")  # spans from the first request on, if it can
    errors.install(app)
    app.add_middleware(
        CORSMiddleware, allow_origins=cors_origins or [], allow_methods=["*"], allow_headers=["*"]
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts or ["*"])

    for name in ROUTER_MODULES:
        if name == "serve.api_a2a" and extras.missing("a2a"):
            continue  # the A2A endpoint comes with the [a2a] extra
        app.include_router(importlib.import_module(name).router, responses=errors.ERROR_RESPONSES)
    from serve import api_audit, api_dashboard, api_metrics, idempotency

    api_dashboard.install(app)  # the pages at `/`, after every route so the API wins
    idempotency.install(app, settings.max_body_bytes)
    api_audit.install(app)  # a mutating call's failed validation is audited
    # Outside everything that reads a body (chunked ones too), inside the metrics.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    api_metrics.install(app)  # added last, so outermost: 401s and replays count too
    return app
