"""Every route of the API declares the permission it needs, and every role gets exactly what
its permissions say, over real HTTP through Serve.

The first test walks the FastAPI app `build_app` makes: a route added without an
`allowed(Action...)` dependency fails it unless it is named below as public on purpose. The
second sends each route (invalid bodies, unknown ids: nothing changes) as each role: a role
without the route's permission gets 403, one with it never gets 401/403 or a 5xx.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute

from cluster.auth.models import PERMISSIONS, Action, Role
from cluster.settings import Settings
from serve.app import build_app
from tests.e2e.conftest import Tenant

#: Routes without a permission, on purpose: probes, the token endpoint, the OpenAPI pages.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/v1/auth/token"),
}
#: Routes any authenticated caller may use: who am I.
ANY_CALLER = {("GET", "/v1/me")}
#: Routes checked by a credential of the platform, not a tenant's role (Prometheus' token).
PLATFORM = {("GET", "/metrics")}
#: WebSocket routes authorize inside the handler (browsers send no headers); pinned here.
WEBSOCKETS = {("WS", "/v1/ws/executions/{execution_id}"): Action.EXECUTIONS_READ}
#: Routes whose permission must stay what it is: credentials, the audit, restores.
PINNED = {
    ("POST", "/v1/keys"): Action.KEYS_MANAGE,
    ("GET", "/v1/keys"): Action.KEYS_MANAGE,
    ("DELETE", "/v1/keys/{key_id}"): Action.KEYS_MANAGE,
    ("POST", "/v1/users"): Action.USERS_MANAGE,
    ("POST", "/v1/users/{username}/totp"): Action.USERS_MANAGE,
    ("GET", "/v1/webhooks/secret"): Action.KEYS_MANAGE,
    ("GET", "/v1/audit"): Action.AUDIT_READ,
    ("GET", "/v1/audit/unauthenticated"): Action.AUDIT_READ,
    ("POST", "/v1/backups/{backup_id}/restore"): Action.BACKUPS_RESTORE,
}
#: Sent as the forbidden roles only: an allowed role would make a backup or open an endless
#: event stream.
DENY_ONLY = {("POST", "/v1/backups"), ("GET", "/v1/events/stream")}


@dataclass(frozen=True)
class RouteInfo:
    method: str
    path: str
    actions: frozenset[Action]


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included routers
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def _actions(dependant: Dependant) -> set[Action]:
    """The actions `serve.deps.allowed(action)` dependencies anywhere in the tree check."""
    found = set()
    for dep in dependant.dependencies:
        if dep.call is not None and inspect.isfunction(dep.call):
            action = inspect.getclosurevars(dep.call).nonlocals.get("action")
            if isinstance(action, Action):
                found.add(action)
        found |= _actions(dep)
    return found


def api_routes(app: FastAPI) -> list[RouteInfo]:
    infos = []
    for route in _routes(app.routes):
        if isinstance(route, APIWebSocketRoute):
            infos.append(RouteInfo("WS", route.path, frozenset(_actions(route.dependant))))
        elif isinstance(route, APIRoute):
            actions = frozenset(_actions(route.dependant))
            infos += [RouteInfo(m, route.path, actions) for m in sorted(route.methods or ())]
    return infos


@pytest.fixture(scope="module")
def routes() -> list[RouteInfo]:
    return api_routes(build_app(Settings()))


def test_every_route_declares_one_permission_or_is_public_on_purpose(
    routes: list[RouteInfo],
) -> None:
    assert len(routes) >= 50  # the walk found the routers' routes
    unexplained = []
    for info in routes:
        key = (info.method, info.path)
        if key in PUBLIC | ANY_CALLER | PLATFORM or key in WEBSOCKETS:
            assert not info.actions, f"{key} is listed as without a permission but has one"
        elif len(info.actions) != 1:
            unexplained.append((key, sorted(info.actions)))
    assert not unexplained, f"routes without exactly one permission: {unexplained}"
    declared = {(i.method, i.path): next(iter(i.actions)) for i in routes if len(i.actions) == 1}
    for key, action in PINNED.items():
        assert declared.get(key) == action, f"{key} must need {action}, has {declared.get(key)}"
    assert {k for k in WEBSOCKETS} <= {(i.method, i.path) for i in routes}


def _send(http: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", "nope", path)
    body: dict[str, object] | None = {} if method in ("POST", "PUT", "PATCH") else None
    deadline = time.monotonic() + 30
    while True:
        answer = http.request(method, url, json=body, headers=headers)
        if answer.status_code != 429 or time.monotonic() > deadline:
            return answer
        time.sleep(float(answer.headers.get("retry-after", "1")))  # our own rate limit


@pytest.mark.parametrize("role", list(Role), ids=str)
def test_each_role_gets_what_its_permissions_say_on_every_route(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], routes: list[RouteInfo], role: Role
) -> None:
    headers = tenants[0].headers(role)
    wrong, checked = [], 0
    for info in routes:
        if info.method == "WS" or len(info.actions) != 1:
            continue
        [action] = info.actions
        allowed = action in PERMISSIONS[role]
        if allowed and (info.method, info.path) in DENY_ONLY:
            continue
        answer = _send(http, info.method, info.path, headers)
        checked += 1
        if allowed:
            ok = answer.status_code not in (401, 403) and answer.status_code < 500
        else:
            ok = answer.status_code == 403 and answer.json()["error"]["type"] == "Forbidden"
        if not ok:
            wrong.append((info.method, info.path, str(action), answer.status_code,
                          answer.text[:160]))  # fmt: skip
    assert checked >= 40
    assert not wrong, wrong
    for method, path in ANY_CALLER:
        assert _send(http, method, path, headers).status_code == 200
