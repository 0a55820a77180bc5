"""What every route depends on: the platform's services, and who is calling.

One `Services` per API replica holds the store connection and the `Security` object, and
builds a `Client` per tenant on first use (its registry, supervisor, workflows, hub and
data). The tenant always comes from the caller's credential, never from the request, so
another tenant's ids simply are not found (404).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request

from actors.client import Client
from actors.system import ensure_supervisor
from cluster import telemetry
from cluster.auth.models import Action, Principal, SecurityConfig
from cluster.auth.security import Security, is_allowed
from cluster.errors import Unauthorized
from cluster.settings import Settings
from cluster.store import Store, connect_store, resolve_redis_url
from cluster.tracing import tag_tenant


class Services:
    """The API replica's connections, and one `Client` per tenant."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis_url = resolve_redis_url(settings)
        self.store: Store = connect_store(settings, url=self.redis_url)
        limits = SecurityConfig(
            rate_per_key=settings.rate_per_key,
            rate_per_tenant=settings.rate_per_tenant,
            login_rate_per_source=settings.login_rate_per_source,
            login_rate_per_user=settings.login_rate_per_user,
            audit_max_entries=settings.audit_max_entries_per_principal,
            audit_retention_s=int(settings.audit_retention_days * 86400),
        )
        self.security = Security.from_settings(self.store, settings, limits)
        self._clients: dict[str, Client] = {}
        self._building = threading.Lock()

    def client(self, tenant: str) -> Client:
        """The tenant's client (its supervisor is started if it does not run yet): blocking
        the first time, so code on the event loop awaits `client_async` first."""
        client = self._clients.get(tenant)
        if client is None:
            with self._building:  # one supervisor lookup per tenant, not one per thread
                client = self._clients.get(tenant)
                if client is None:
                    settings = self.settings.model_copy(
                        update={"tenant": tenant, "redis_url": self.redis_url}
                    )
                    store = self.store.for_tenant(tenant)
                    supervisor = ensure_supervisor(settings, self.redis_url)
                    client = self._clients[tenant] = Client(settings, store, supervisor)
        return client

    async def client_async(self, tenant: str) -> Client:
        """`client`, built in a worker thread the first time, so the event loop never waits."""
        client = self._clients.get(tenant)
        return client if client is not None else await asyncio.to_thread(self.client, tenant)


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
    def client(self) -> Client:
        return self.services.client(self.tenant)

    def audited(self, action: Action, obj: str = "") -> Any:
        """`with caller.audited(...):` around a mutating call: one audit entry, allowed or not."""
        return self.services.security.audited(
            self.principal, action, obj=obj, request_id=self.request_id
        )


def connect_services(app: FastAPI) -> Services:
    """The replica's services, connected on first use (the store, security, tenant clients)."""
    if app.state.services is None:
        app.state.services = Services(app.state.settings)
        telemetry.setup_process(app.state.settings, "api", redis_url=app.state.services.redis_url)
    return app.state.services  # type: ignore[no-any-return]


def services(request: Request) -> Services:
    return connect_services(request.app)


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


def authenticated(svc: Services, token: str | None, request_id: str, source: str = "") -> Caller:
    """The caller behind a credential, counted against its rate limits (REST and gRPC); a
    failure is counted in the audit by key id and source (`source`: the peer's address).

    Raises: Unauthorized, RateLimited, StoreUnavailable.
    """
    try:
        if token is None:
            raise Unauthorized("no credential: send 'Authorization: Bearer <token or API key>'")
        principal = svc.security.authenticate(token)
    except Unauthorized:
        svc.security.audit.record_failed_authentication(token, source)
        raise
    svc.security.check_rate(principal)
    return Caller(principal, request_id, svc)


async def authorized(who: Caller, action: Action) -> Caller:
    """The caller, who must hold `action` (denials are audited), with the tenant's client
    ready unless the action only touches credentials. Raises: Forbidden."""
    if not is_allowed(who.principal, action):
        # Denials are written to the audit stream: a Redis call, so off the event loop.
        security = who.services.security
        await asyncio.to_thread(
            security.authorize, who.principal, action, request_id=who.request_id
        )
    if action not in _CREDENTIAL_ACTIONS:
        # Routes read `who.client` on the event loop: build it (a blocking supervisor
        # lookup, the first time for a tenant) in a worker thread now.
        await who.services.client_async(who.tenant)
    return who


#: Actions that never need the tenant's client (and so never start its supervisor).
_CREDENTIAL_ACTIONS = frozenset({Action.KEYS_MANAGE, Action.USERS_MANAGE, Action.AUDIT_READ})


def caller(request: Request, svc: Services = Depends(services)) -> Caller:  # noqa: B008
    """Authenticate and rate-limit the request. Raises: Unauthorized, RateLimited."""
    try:
        token: str | None = credential(request)
    except Unauthorized:
        token = None
    source = request.client.host if request.client else ""
    who = authenticated(svc, token, request_id(request), source)
    tag_tenant(who.tenant)  # the request's span is kept with the tenant's traces
    request.state.caller = who  # for the audit of a failed validation (serve.api_audit)
    return who


def allowed(action: Action) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, who must hold `action` (denials are audited). Raises: Forbidden."""

    async def check(who: Caller = Depends(caller)) -> Caller:  # noqa: B008
        return await authorized(who, action)

    return check
