"""What every route depends on: the platform's services, and who is calling.

One `Services` per API replica holds the store connection, `Security` and its awaited
per-request checks (`serve.gate.Gate`), and builds each tenant's `TenantServices` on first
use (its supervisor gateway, router, registry, executions, hub and data). The tenant always
comes from the caller's credential, never from the request, so another tenant's ids simply
are not found (404).

Everything a request does before its route runs is awaited on the event loop: the
credential, both rate limits, the role check; a denial and the audit entry of a mutating
call are awaited writes too (`async with caller.audit(...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request

from actors.contract import SupervisorApi
from cluster import telemetry
from cluster.auth.models import Action, Principal, SecurityConfig
from cluster.auth.security import Security, is_allowed
from cluster.errors import DafnckError, Forbidden, Unauthorized
from cluster.settings import Settings
from cluster.store import Store, connect_store, resolve_redis_url
from cluster.tracing import tag_tenant
from serve.gate import Gate
from serve.tenants import SupervisorSource, TenantServices, ray_supervisor


class Services:
    """The API replica's connections, and one `TenantServices` per tenant.

    `supervisors` starts (or finds) a tenant's supervisor: Ray's by default; route tests
    pass one that returns a fake.
    """

    def __init__(self, settings: Settings, supervisors: SupervisorSource = ray_supervisor) -> None:
        self.settings = settings
        self.redis_url = resolve_redis_url(settings)
        self.store: Store = connect_store(settings, url=self.redis_url)
        self.config = SecurityConfig(
            rate_per_key=settings.rate_per_key,
            rate_per_tenant=settings.rate_per_tenant,
            login_rate_per_source=settings.login_rate_per_source,
            login_rate_per_user=settings.login_rate_per_user,
            audit_max_entries=settings.audit_max_entries_per_principal,
            audit_retention_s=int(settings.audit_retention_days * 86400),
        )
        self.security = Security.from_settings(self.store, settings, self.config)
        self.gate = Gate(self.security, self.store, self.config)
        self._supervisors = supervisors
        self._tenants: dict[str, TenantServices] = {}
        self._building = threading.Lock()

    def ready(self, tenant: str) -> TenantServices:
        """The tenant's services, built already (`await tenant(...)` did). Raises: KeyError."""
        return self._tenants[tenant]

    async def tenant(self, tenant: str) -> TenantServices:
        """The tenant's services; the first time, its supervisor is started (or found) in a
        worker thread, so the event loop never waits on it."""
        found = self._tenants.get(tenant)
        return found if found is not None else await asyncio.to_thread(self._build, tenant)

    def _build(self, tenant: str) -> TenantServices:
        with self._building:  # one supervisor lookup per tenant, not one per request
            found = self._tenants.get(tenant)
            if found is None:
                settings = self.settings.model_copy(
                    update={"tenant": tenant, "redis_url": self.redis_url}
                )
                gateway = self._supervisors(settings)
                found = TenantServices.build(settings, self.store.for_tenant(tenant), gateway)
                self._tenants[tenant] = found
        return found


@dataclass(frozen=True)
class Caller:
    """One authenticated request: who, for which tenant, under which request id."""

    principal: Principal
    request_id: str
    services: Services

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    @property
    def tenant_services(self) -> TenantServices:
        """The caller's tenant's parts (built by `allowed` before the route runs)."""
        return self.services.ready(self.tenant)

    @property
    def gateway(self) -> SupervisorApi:
        """The caller's tenant's supervisor operations."""
        return self.tenant_services.gateway

    @contextlib.asynccontextmanager
    async def audit(self, action: Action, obj: str = "") -> AsyncIterator[None]:
        """`async with caller.audit(...):` around a mutating call: authorized, then one
        audit entry ("ok", "failed" or "denied"). Raises: Forbidden, what the block raises,
        StoreUnavailable."""
        gate = self.services.gate
        if not is_allowed(self.principal, action):
            await deny(self, action, obj)
        try:
            yield
        except BaseException as exc:
            detail = exc.message if isinstance(exc, DafnckError) else type(exc).__name__
            await gate.record(self.principal, action, obj, self.request_id, "failed", detail)
            raise
        await gate.record(self.principal, action, obj, self.request_id, "ok")


async def deny(who: Caller, action: Action, obj: str = "") -> None:
    """Record the denial in the audit stream, then refuse. Raises: Forbidden."""
    refusal = Forbidden.for_role(who.principal.role.value, str(action))
    gate = who.services.gate
    await gate.record(who.principal, action, obj, who.request_id, "denied", refusal.message)
    raise refusal


def connect_services(app: FastAPI) -> Services:
    """The replica's services, connected on first use (the store, security, tenant parts).
    Blocking the first time: code on the event loop awaits `services_of` instead."""
    if app.state.services is None:
        app.state.services = Services(app.state.settings)
        telemetry.setup_process(app.state.settings, "api", redis_url=app.state.services.redis_url)
    return app.state.services  # type: ignore[no-any-return]


async def services_of(app: FastAPI) -> Services:
    """`connect_services`, connected in a worker thread the first time."""
    found = app.state.services
    return found if found is not None else await asyncio.to_thread(connect_services, app)


async def services(request: Request) -> Services:
    return await services_of(request.app)


def request_id(request: Request) -> str:
    """The server's id of the request (set by the outermost middleware): never the client's
    X-Request-ID, which the audit keeps apart as `client_request_id`."""
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


def header_credential(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <JWT or API key>`, else `X-API-Key` (HTTP headers or gRPC
    metadata, lowercase keys), else None."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None


def credential(request: Request) -> str:
    """The bearer token (JWT or API key) or `X-API-Key`. Raises: Unauthorized."""
    found = header_credential(request.headers)
    if found:
        return found
    # Browsers can't set headers on a WebSocket or an EventSource: there only, a query
    # parameter (elsewhere it would end up in proxies' and servers' access logs).
    token = request.query_params.get("access_token", "").strip()
    if token and is_stream(request):
        return token
    if token:
        raise Unauthorized(
            "access_token in the query is accepted on stream routes (SSE, WebSocket) only; "
            "send 'Authorization: Bearer <token or API key>'"
        )
    raise Unauthorized("no credential: send 'Authorization: Bearer <token or API key>'")


def is_stream(request: Request) -> bool:
    """A WebSocket, or a route whose answer is an event stream (its `response_class`)."""
    if request.scope.get("type") == "websocket":
        return True
    answer = getattr(request.scope.get("route"), "response_class", None)
    return getattr(answer, "media_type", None) == "text/event-stream"


async def authenticate(
    svc: Services, token: str | None, request_id: str, source: str = ""
) -> Caller:
    """The caller behind a credential, counted against its rate limits (REST and gRPC); a
    failure is counted in the audit by key id and source (`source`: the peer's address).

    Raises: Unauthorized, RateLimited, StoreUnavailable.
    """
    try:
        if token is None:
            raise Unauthorized("no credential: send 'Authorization: Bearer <token or API key>'")
        principal = await svc.gate.authenticate(token)
    except Unauthorized:
        await svc.gate.failed(token, source)
        raise
    await svc.gate.check_rate(principal)
    return Caller(principal, request_id, svc)


async def authorized(who: Caller, action: Action) -> Caller:
    """The caller, who must hold `action` (denials are audited), with the tenant's services
    ready unless the action only touches credentials. Raises: Forbidden."""
    if not is_allowed(who.principal, action):
        await deny(who, action)
    if action not in _CREDENTIAL_ACTIONS:
        await who.services.tenant(who.tenant)  # the first time: its supervisor, off the loop
    return who


#: Actions that never need the tenant's services (and so never start its supervisor).
_CREDENTIAL_ACTIONS = frozenset({Action.KEYS_MANAGE, Action.USERS_MANAGE, Action.AUDIT_READ})


async def caller(request: Request) -> Caller:
    """Authenticate and rate-limit the request. Raises: Unauthorized, RateLimited."""
    svc = await services_of(request.app)
    try:
        token: str | None = credential(request)
    except Unauthorized:
        token = None
    source = request.client.host if request.client else ""
    who = await authenticate(svc, token, request_id(request), source)
    tag_tenant(who.tenant)  # the request's span is kept with the tenant's traces
    request.state.caller = who  # for the audit of a failed validation (serve.api_audit)
    return who


def allowed(action: Action) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, who must hold `action` (denials are audited). Raises: Forbidden."""

    async def check(who: Caller = Depends(caller)) -> Caller:  # noqa: B008
        return await authorized(who, action)

    return check
