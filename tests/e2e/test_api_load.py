"""The API under load and its audit over real HTTP: a full queue answers 429 (never 5xx),
every mutating call leaves exactly one audit entry, and the `api` bench suite runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray import serve as ray_serve

from actors.client import Client, connect
from cluster.auth.keys import ApiKeys
from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.bench.api import run_api_suite
from cluster.settings import Settings
from serve.deployment import AUTOSCALING, INGRESS, settings_env
from tests.e2e.conftest import ECHO, Tenant, _tenant
from tests.integration.conftest import kill_tenant

CONCURRENT = 200


@pytest.fixture
def full_queue_url(api_url: str, e2e_settings: Settings) -> Iterator[str]:
    """Our ingress with our backpressure config, but 1 request at a time and 2 queued."""
    name = f"full-queue-{uuid.uuid4().hex[:6]}"
    tight = INGRESS.options(
        max_ongoing_requests=1,
        max_queued_requests=2,
        autoscaling_config={**AUTOSCALING, "min_replicas": 1, "max_replicas": 1},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": settings_env(e2e_settings)}},
    )
    ray_serve.run(tight.bind(), name=name, route_prefix=f"/{name}")
    yield f"{api_url}/{name}"
    ray_serve.delete(name)


async def _burst(url: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        return list(await asyncio.gather(*(http.get(url) for _ in range(n))))


def test_a_full_queue_answers_only_2xx_and_429_with_retry_after(full_queue_url: str) -> None:
    assert httpx.get(f"{full_queue_url}/readyz", timeout=30).status_code == 200
    answers = asyncio.run(_burst(f"{full_queue_url}/readyz", CONCURRENT))
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 429}, codes
    assert codes[200] >= 1 and codes[429] >= 1, codes  # the queue did fill, and still served
    assert all(r.headers.get("retry-after") == "1" for r in answers if r.status_code == 429)


@pytest.fixture
def fresh_tenant(security: Security) -> Iterator[Tenant]:
    """A tenant of its own, so its audit stream holds only this test's calls."""
    tenant = _tenant(security, "audit")
    yield tenant
    kill_tenant(tenant.name)


def _call(http: httpx.Client, method: str, path: str, headers: dict[str, str], **kw: Any) -> str:
    """Send one request with a fresh request id; returns that id."""
    rid = uuid.uuid4().hex
    http.request(method, path, headers={**headers, "X-Request-Id": rid}, **kw)
    return rid


def test_the_audit_has_one_entry_per_mutating_call(
    http: httpx.Client, fresh_tenant: Tenant, security: Security
) -> None:
    op, agent = fresh_tenant.headers(Role.OPERATOR), fresh_tenant.headers(Role.AGENT)
    viewer = fresh_tenant.headers(Role.VIEWER)
    task_id, idem = uuid.uuid4().hex, {"Idempotency-Key": uuid.uuid4().hex}
    async_task = {"capability": "test.echo", "input": {"text": "b"}}
    expected = [
        (_call(http, "POST", "/v1/agents", op, json=ECHO), "agents:write", "agent:echo@1.0.0", "ok"),
        (_call(http, "POST", "/v1/agents/echo/scale", op, json={"replicas": 1}),
         "agents:write", "agent:echo", "ok"),
        (_call(http, "POST", "/v1/tasks", agent, params={"wait": "true"},
               json={"id": task_id, "capability": "test.echo", "input": {"text": "a"}}),
         "tasks:run", f"task:{task_id}", "ok"),
        (_call(http, "POST", "/v1/tasks", {**agent, **idem}, json=async_task),
         "tasks:run", None, "ok"),
        (_call(http, "POST", "/v1/agents", viewer, json=ECHO), "agents:write", "", "denied"),
        (_call(http, "POST", "/v1/agents/nope/scale", op, json={"replicas": 1}),
         "agents:write", "agent:nope", "failed"),
        (_call(http, "DELETE", "/v1/agents/echo@1.0.0", op), "agents:write",
         "agent:echo@1.0.0", "ok"),
        # A malformed body is refused before the route runs: recorded as "invalid".
        (_call(http, "POST", "/v1/agents/echo/scale", op, json={"replicas": -1}),
         "input:invalid", "POST /v1/agents/echo/scale", "invalid"),
    ]  # fmt: skip
    # Neither reads nor a replayed Idempotency-Key are audited.
    replay = _call(http, "POST", "/v1/tasks", {**agent, **idem}, json=async_task)
    reads = [_call(http, "GET", "/v1/agents", viewer), _call(http, "GET", "/v1/tasks/x", agent)]

    entries = security.audit.list(fresh_tenant.name, limit=1000).entries
    # The client's X-Request-ID is kept apart: the entry's own id is the server's.
    got = [(e.client_request_id, e.action, e.object, e.outcome) for e in entries]
    assert len(got) == len(expected), got
    for (rid, action, obj, outcome), entry in zip(expected, got, strict=True):
        assert entry[0] == rid and entry[1] == action and entry[3] == outcome, entry
        assert obj is None or entry[2] == obj, entry
    assert all(e.tenant == fresh_tenant.name for e in entries)
    assert {replay, *reads}.isdisjoint(e.client_request_id for e in entries)
    assert not {e.request_id for e in entries} & {rid for rid, *_ in expected}


@pytest.fixture
def bench_client(e2e_ray: None, e2e_settings: Settings) -> Iterator[Client]:
    tenant = f"bench{uuid.uuid4().hex[:8]}"
    client = connect(settings=e2e_settings.model_copy(update={"tenant": tenant}))
    yield client
    kill_tenant(tenant)


def test_the_api_bench_suite_in_quick_mode(
    bench_client: Client, api_url: str, http: httpx.Client
) -> None:
    started = time.monotonic()
    rows = run_api_suite(bench_client, quick=True)
    assert time.monotonic() - started < 60
    assert [r["name"] for r in rows] == ["api_noop_rps", "api_noop_p50_ms", "api_noop_p99_ms"]
    assert [r["unit"] for r in rows] == ["req/s", "ms", "ms"]
    for row in rows:
        assert row["suite"] == "api" and row["value"] > 0 and row["baseline"] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=1e-3)
    # It used the running Serve, removed its apps and its keys, and left the API serving.
    assert not [a for a in ray_serve.status().applications if bench_client.settings.tenant in a]
    keys = ApiKeys(bench_client.store).list_api_keys(bench_client.settings.tenant)
    assert keys and all(k.revoked_at is not None for k in keys)
    assert http.get("/readyz").status_code == 200
