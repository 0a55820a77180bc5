"""Purging executions over real HTTP through Serve: operators and admins only, never an
execution that has not ended, and a request that names nothing purges nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cluster.auth.models import Role
from cluster.auth.security import Security
from tests.e2e.conftest import ECHO, Tenant
from tests.integration.conftest import kill_tenant
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(300)

SLOW = {
    "name": "sleeper",
    "version": "1.0.0",
    "capabilities": ["test.slow"],
    "entrypoint": "tests.fixtures.agents:slow",
}


def _flow(name: str, uses: str, with_: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "steps": [{"id": "s", "uses": uses, "with": with_}]}


@pytest.fixture
def fresh(security: Security) -> Iterator[Tenant]:
    """A tenant of this test alone: purging by age touches nobody else's executions."""
    name = f"ret{uuid.uuid4().hex[:8]}"
    yield Tenant(name, {r: security.keys.create_api_key(name, r, f"{r}-key")[1] for r in Role})
    kill_tenant(name)


def _start(http: httpx.Client, op: dict[str, str], workflow: str, wait: bool) -> dict[str, Any]:
    answer = http.post(
        "/v1/executions",
        params={"wait": str(wait).lower(), "timeout_s": 120},
        json={"workflow": workflow},
        headers=op,
        timeout=150,
    )
    assert answer.status_code in (200, 202), answer.text
    return dict(answer.json())


def test_purge_is_for_operators_and_spares_what_has_not_ended(
    http: httpx.Client, fresh: Tenant
) -> None:
    op = fresh.headers(Role.OPERATOR)
    for agent in (ECHO, SLOW):
        assert http.post("/v1/agents", json=agent, headers=op, timeout=120).status_code == 200
    for flow in (
        _flow("one", "test.echo", {"text": "x"}),
        _flow("nap", "test.slow", {"seconds": 300}),
    ):
        assert http.post("/v1/workflows", json=flow, headers=op).status_code == 201
    done = _start(http, op, "one", wait=True)
    assert done["status"] == "succeeded"
    napping = _start(http, op, "nap", wait=False)["id"]
    wait_until(
        lambda: http.get(f"/v1/executions/{napping}", headers=op).json()["status"] == "running",
        60,
        "the long execution running",
    )

    for role in (Role.VIEWER, Role.AGENT):
        denied = http.delete(f"/v1/executions/{done['id']}", headers=fresh.headers(role))
        assert denied.status_code == 403, denied.text
        denied = http.post(
            "/v1/executions/purge", json={"older_than_s": 0}, headers=fresh.headers(role)
        )
        assert denied.status_code == 403, denied.text
    empty = http.post("/v1/executions/purge", json={}, headers=op)
    assert empty.status_code == 422 and "purges nothing" in empty.text
    alive = http.post(
        "/v1/executions/purge", json={"older_than_s": 0, "statuses": ["running"]}, headers=op
    )
    assert alive.status_code == 422 and "running" in alive.text

    refused = http.delete(f"/v1/executions/{napping}", headers=op)
    assert refused.status_code == 409 and "running" in refused.text
    report = http.post("/v1/executions/purge", json={"older_than_s": 0}, headers=op)
    assert report.status_code == 200, report.text
    assert report.json()["purged"] == [done["id"]]
    assert http.get(f"/v1/executions/{done['id']}", headers=op).status_code == 404
    assert http.get(f"/v1/executions/{napping}", headers=op).json()["status"] == "running"
    assert http.delete(f"/v1/executions/{done['id']}", headers=op).status_code == 404

    cancelled = http.post(f"/v1/executions/{napping}/cancel", json={}, headers=op)
    assert cancelled.status_code == 200, cancelled.text
    wait_until(
        lambda: http.get(f"/v1/executions/{napping}", headers=op).json()["status"] == "cancelled",
        60,
        "the long execution cancelled",
    )
    assert http.delete(f"/v1/executions/{napping}", headers=op).status_code == 204
    assert http.get(f"/v1/executions/{napping}", headers=op).status_code == 404
