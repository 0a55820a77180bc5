"""Agents, tasks, idempotency, limits and metrics over real HTTP through Serve."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from cluster.auth.models import Role
from tests.conftest import SCRAPER
from tests.e2e.conftest import ECHO, Tenant


@pytest.fixture(scope="module")
def echo_agent(api_url: str, tenants: tuple[Tenant, Tenant]) -> dict[str, Any]:
    """The echo agent, applied in tenant A by its operator."""
    response = httpx.post(
        f"{api_url}/v1/agents", json=ECHO, headers=tenants[0].headers(Role.OPERATOR), timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_agents_apply_discover_get_status_scale(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], echo_agent: dict[str, Any]
) -> None:
    op = tenants[0].headers(Role.OPERATOR)
    assert echo_agent["spec"]["name"] == "echo"
    found = http.get("/v1/agents", params={"capability": "test.echo"}, headers=op).json()
    assert [a["spec"]["name"] for a in found["agents"]] == ["echo"]
    assert http.get("/v1/agents", params={"capability": "x.y"}, headers=op).json()["agents"] == []
    bad_range = http.get("/v1/agents", params={"version": "not a range"}, headers=op)
    assert bad_range.status_code == 422 and "version" in bad_range.text
    assert http.get("/v1/agents/echo@1.0.0", headers=op).json()["spec"]["name"] == "echo"
    status = http.put("/v1/agents/echo@1.0.0/status", json={"status": "active"}, headers=op)
    assert status.status_code == 200 and status.json()["agents"][0]["status"] == "active"
    too_many = http.post("/v1/agents/echo/scale", json={"replicas": 50}, headers=op)
    assert too_many.status_code == 422, too_many.text


def test_tasks_wait_and_async(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], echo_agent: dict[str, Any]
) -> None:
    agent = tenants[0].headers(Role.AGENT)
    task = {"capability": "test.echo", "input": {"text": "hi", "times": 2}}
    done = http.post("/v1/tasks", params={"wait": "true"}, json=task, headers=agent)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded" and done.json()["output"]["text"] == "hihi"

    accepted = http.post("/v1/tasks", json=task, headers=agent)
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["location"] == f"/v1/tasks/{accepted.json()['id']}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = http.get(accepted.headers["location"], headers=agent).json()
        if record["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert record["status"] == "succeeded", record
    assert record["result"]["output"]["text"] == "hihi"
    again = http.post(f"{accepted.headers['location']}/cancel", headers=agent)
    assert again.status_code == 409

    bad_input = http.post("/v1/tasks", json={"capability": "test.echo", "input": {"times": 1}},
                          params={"wait": "true"}, headers=agent)  # fmt: skip
    assert bad_input.status_code == 422 and "text" in bad_input.text


def test_another_tenants_ids_answer_404(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], echo_agent: dict[str, Any]
) -> None:
    a, b = tenants
    task = http.post("/v1/tasks", json={"capability": "test.echo", "input": {"text": "x"}},
                     headers=a.headers(Role.OPERATOR)).json()  # fmt: skip
    other = b.headers(Role.ADMIN)
    assert http.get("/v1/agents/echo@1.0.0", headers=other).status_code == 404
    assert http.get("/v1/agents", headers=other).json()["agents"] == []
    put = http.put("/v1/agents/echo@1.0.0/status", json={"status": "draining"}, headers=other)
    assert put.status_code == 404
    assert (
        http.post("/v1/agents/echo/scale", json={"replicas": 1}, headers=other).status_code == 404
    )
    assert http.delete("/v1/agents/echo@1.0.0", headers=other).status_code == 404
    assert http.get(f"/v1/tasks/{task['id']}", headers=other).status_code == 404
    assert http.post(f"/v1/tasks/{task['id']}/cancel", headers=other).status_code == 404
    keys_a = http.get("/v1/keys", headers=a.headers(Role.ADMIN)).json()
    revoke = http.delete(f"/v1/keys/{keys_a[0]['key_id']}", headers=other)
    assert revoke.status_code == 404
    assert http.get("/v1/agents/echo@1.0.0", headers=a.headers(Role.VIEWER)).status_code == 200


def test_oversize_body_is_413_and_malformed_json_is_422(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    op = tenants[0].headers(Role.OPERATOR)
    big = http.post("/v1/agents", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                    headers={**op, "content-type": "application/json"})  # fmt: skip
    assert big.status_code == 413
    broken = http.post(
        "/v1/agents", content=b'{"name": ', headers={**op, "content-type": "application/json"}
    )
    assert broken.status_code == 422 and "body" in broken.json()["error"]["message"]
    missing = http.post("/v1/agents", json={"name": "x", "entrypoint": "m:f"}, headers=op)
    assert missing.status_code == 422
    assert "body.capabilities" in missing.json()["error"]["message"]
    extra = http.post("/v1/keys", json={"role": "viewer", "name": "n", "tenant": "other"},
                      headers=tenants[0].headers(Role.ADMIN))  # fmt: skip
    assert extra.status_code == 422 and "body.tenant" in extra.text


def _key_count(http: httpx.Client, headers: dict[str, str]) -> int:
    return len(http.get("/v1/keys", headers=headers).json())


def test_idempotency_key_replays_the_first_answer_once(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    admin = {**tenants[1].headers(Role.ADMIN), "Idempotency-Key": uuid.uuid4().hex}
    before = _key_count(http, admin)
    first = http.post("/v1/keys", json={"role": "viewer", "name": "idem"}, headers=admin)
    second = http.post("/v1/keys", json={"role": "viewer", "name": "idem"}, headers=admin)
    assert first.status_code == 201
    # The answer held the key's secret: only its status was kept, so the duplicate has no
    # second effect and is told so, without the secret.
    assert second.status_code == 409, second.text
    assert second.json()["error"]["type"] == "IdempotencyAnswerNotKept"
    assert first.json()["secret"] not in second.text
    assert _key_count(http, admin) == before + 1
    reused = http.post("/v1/keys", json={"role": "viewer", "name": "other"}, headers=admin)
    assert reused.status_code == 409 and reused.json()["error"]["type"] == "IdempotencyKeyReused"


def test_concurrent_duplicates_have_one_effect(
    api_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    admin = {**tenants[1].headers(Role.ADMIN), "Idempotency-Key": uuid.uuid4().hex}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        before = _key_count(http, admin)

        def post(_: int) -> httpx.Response:
            return http.post("/v1/keys", json={"role": "agent", "name": "race"}, headers=admin)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        assert {r.status_code for r in answers} <= {201, 409}
        made = {r.json()["key_id"] for r in answers if r.status_code == 201}
        assert len(made) == 1
        assert _key_count(http, admin) == before + 1


def test_metrics_count_requests_by_route_template(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    viewer = tenants[0].headers(Role.VIEWER)
    http.get("/v1/agents/some-agent@1.0.0", headers=viewer)
    assert http.get("/metrics").status_code == 401
    assert http.get("/metrics", headers=viewer).status_code == 403  # tenants never scrape
    text = http.get("/metrics", headers=SCRAPER).text
    assert 'route="/v1/agents/{agent_id}"' in text
    assert "some-agent" not in text
    assert "dafnck_http_requests_total" in text
