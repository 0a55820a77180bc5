"""The audit over real HTTP through Serve: one viewer's flood of denials leaves everyone
else's history, 401s are counted per key and source, failed validations and reads of
secrets are recorded, request ids are the server's, and `GET /v1/audit` filters and pages."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cluster.auth.keys import AUTH_SPACE
from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.cli.auth import auth_app
from cluster.settings import Settings
from tests.e2e.conftest import ECHO, Tenant, _tenant
from tests.integration.conftest import kill_tenant


@pytest.fixture
def tenant(security: Security) -> Iterator[Tenant]:
    """A tenant of its own, so its audit holds only this test's calls."""
    fresh = _tenant(security, "audit")
    yield fresh
    kill_tenant(fresh.name)


def subject(tenant: Tenant, role: Role) -> str:
    return f"key:{tenant.keys[role].split('_')[1]}"


def audit(http: httpx.Client, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    """Every page of `GET /v1/audit` with these filters, as the tenant's admin."""
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = http.get("/v1/audit", params=query, headers=tenant.headers(Role.ADMIN))
        assert page.status_code == 200, page.text
        entries += page.json()["entries"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return entries


def test_a_viewers_flood_of_denials_evicts_no_one_elses_history(
    http: httpx.Client, tenant: Tenant
) -> None:
    operator = tenant.headers(Role.OPERATOR)
    assert (
        http.post("/v1/agents/nope/scale", json={"replicas": 1}, headers=operator).status_code
        == 404
    )
    viewer = tenant.headers(Role.VIEWER)
    for _ in range(200):
        assert http.post("/v1/agents", json=ECHO, headers=viewer).status_code == 403

    [kept] = audit(http, tenant, principal=subject(tenant, Role.OPERATOR))
    assert (kept["action"], kept["object"], kept["outcome"]) == (
        "agents:write", "agent:nope", "failed",
    )  # fmt: skip
    denials = audit(http, tenant, principal=subject(tenant, Role.VIEWER), limit=70)
    assert len(denials) == 200 and {d["outcome"] for d in denials} == {"denied"}
    assert len({d["id"] for d in denials}) == 200  # three pages, nothing twice


def test_401s_are_counted_per_key_and_source_not_stored_one_by_one(
    http: httpx.Client, tenant: Tenant
) -> None:
    key_id = tenant.keys[Role.VIEWER].split("_")[1]
    wrong = {"Authorization": f"Bearer dk_{key_id}_{'x' * 43}"}
    for _ in range(5):
        assert http.get("/v1/agents", headers=wrong).status_code == 401

    counts = http.get("/v1/audit/unauthenticated", headers=tenant.headers(Role.ADMIN)).json()
    mine = [c for c in counts if c["key_id"] == key_id]
    assert sum(c["count"] for c in mine) == 5, counts
    assert {c["source"] for c in mine} == {"127.0.0.1"}
    assert audit(http, tenant) == []  # no entry per 401


def test_a_failed_validation_and_a_read_secret_are_audited_under_the_servers_request_id(
    http: httpx.Client, tenant: Tenant
) -> None:
    spoofed = f"spoofed-{uuid.uuid4().hex}"
    operator = {**tenant.headers(Role.OPERATOR), "X-Request-ID": spoofed}
    bad = http.post("/v1/agents/echo/scale", json={"replicas": -1}, headers=operator)
    assert bad.status_code == 422
    read = http.get("/v1/webhooks/secret", headers=tenant.headers(Role.ADMIN))
    assert read.status_code == 200

    [invalid] = audit(http, tenant, outcome="invalid")
    assert invalid["subject"] == subject(tenant, Role.OPERATOR)
    assert invalid["object"] == "POST /v1/agents/echo/scale" and "replicas" in invalid["detail"]
    assert invalid["request_id"] == bad.headers["x-server-request-id"] != spoofed
    assert invalid["client_request_id"] == spoofed
    [secret_read] = audit(http, tenant, action="keys:manage")
    assert (secret_read["object"], secret_read["outcome"]) == ("webhooks:secret:read", "ok")
    assert read.json()["secret"] not in str(audit(http, tenant))


def test_the_audit_is_for_admins_and_filters_by_time(http: httpx.Client, tenant: Tenant) -> None:
    start = time.time()
    for role in (Role.OPERATOR, Role.VIEWER, Role.AGENT):
        assert http.get("/v1/audit", headers=tenant.headers(role)).status_code == 403
    viewer = tenant.headers(Role.VIEWER)
    assert http.post("/v1/agents", json=ECHO, headers=viewer).status_code == 403
    entries = audit(http, tenant, since=start)
    # The three refused audit reads and the viewer's denied write, in order.
    assert [e["outcome"] for e in entries] == ["denied"] * 4
    assert entries[-1]["action"] == "agents:write"
    assert audit(http, tenant, until=start - 3600) == []
    bad = http.get("/v1/audit", params={"since": 2, "until": 1}, headers=tenant.headers(Role.ADMIN))
    assert bad.status_code == 422 and "since" in bad.text
    cursor = http.get("/v1/audit", params={"cursor": "x"}, headers=tenant.headers(Role.ADMIN))
    assert cursor.status_code == 422 and "cursor" in cursor.text


def test_dafnck_auth_audit_filters_what_the_api_recorded(
    http: httpx.Client, tenant: Tenant, e2e_settings: Settings
) -> None:
    viewer = tenant.headers(Role.VIEWER)
    assert http.post("/v1/agents", json=ECHO, headers=viewer).status_code == 403
    assert http.get("/v1/agents", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    env = {"DAFNCK_REDIS_URL": str(e2e_settings.redis_url),
           "DAFNCK_STATE_DIR": str(e2e_settings.state_dir)}  # fmt: skip
    runner, base = CliRunner(), ["audit", "--tenant", tenant.name, "--json"]

    denied = runner.invoke(auth_app, [*base, "--outcome", "denied", "--since", "10m"], env=env)
    assert denied.exit_code == 0, denied.output
    [entry] = json.loads(denied.output)["entries"]
    assert (entry["subject"], entry["action"]) == (subject(tenant, Role.VIEWER), "agents:write")
    none = runner.invoke(auth_app, [*base, "--outcome", "ok"], env=env)
    assert json.loads(none.output)["entries"] == []
    # A credential naming no key is counted in the platform's auth space, for the operator.
    space = ["audit", "--tenant", AUTH_SPACE, "--unauthenticated", "--since", "10m", "--json"]
    counted = json.loads(runner.invoke(auth_app, space, env=env).output)
    assert any(c["key_id"] == "-" and c["source"] == "127.0.0.1" for c in counted), counted
    bad = runner.invoke(auth_app, [*base, "--since", "yesterday"], env=env)
    assert bad.exit_code != 0 and "15m" in bad.output
