"""Per-tenant quotas, attacked over real HTTP through Serve as a tenant would.

The module deploys a second Serve application (under `/quotas`, beside the session's API)
whose settings carry small quotas, and uses a tenant of its own, so its supervisor and its
data layer run with those quotas. Every loop is bounded; every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.quotas import Quotas
from cluster.settings import Settings
from tests.e2e.conftest import ECHO, Tenant, _tenant
from tests.integration.conftest import kill_tenant
from tests.integration.helpers import wait_until

APP = "dafnck-quotas"
PREFIX = "/quotas"
QUOTAS = Quotas(
    streams_per_key=2,
    streams_per_tenant=3,
    stream_lease_s=60,
    stored_objects=3,
    stored_bytes=40_000,
    replicas=2,
    executions_running=3,
    for_each_items=3,
    workflow_depth=2,
)
TEN = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
EIGHT_MAPS = f"{TEN}.map(h, h)"
for _var in "gfedcba":
    EIGHT_MAPS = f"{TEN}.map({_var}, {EIGHT_MAPS})"


@pytest.fixture(scope="module")
def quota_url(api_url: str, e2e_settings: Settings) -> Iterator[str]:
    """The API again, with `QUOTAS`, at `<api_url>/quotas`."""
    from ray import serve as ray_serve

    from serve.deployment import INGRESS, settings_env

    settings = e2e_settings.model_copy(update={"quotas": QUOTAS})
    deployment = INGRESS.options(
        autoscaling_config={"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": settings_env(settings)}},
    )
    ray_serve.run(deployment.bind(), name=APP, route_prefix=PREFIX)
    url = f"{api_url}{PREFIX}"

    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        return False

    wait_until(ready, 60, "the quota application to answer")
    yield url
    ray_serve.delete(APP)


@pytest.fixture(scope="module")
def tenant(security: Security) -> Iterator[Tenant]:
    """A tenant only this module uses: its supervisor starts with `QUOTAS`."""
    made = _tenant(security, "q")
    yield made
    kill_tenant(made.name)


@pytest.fixture(scope="module")
def admin(quota_url: str, tenant: Tenant) -> Iterator[httpx.Client]:
    """The tenant's admin, with the echo agent (one replica of the two allowed) applied."""
    echo = {**ECHO, "replicas": {"min": 1, "max": 3}}
    with httpx.Client(base_url=quota_url, timeout=60, headers=tenant.headers(Role.ADMIN)) as h:
        assert h.post("/v1/agents", json=echo).status_code == 200
        yield h


def _refused(response: httpx.Response, status: int, limit: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] in ("QuotaExceeded", "StorageQuotaExceeded")
    assert error["limit"] == limit and repr(limit) in error["message"]
    return error


# -- streams --------------------------------------------------------------------------------


@contextlib.contextmanager
def _stream(url: str, tenant: Tenant, role: Role) -> Iterator[httpx.Response]:
    headers = tenant.headers(role)
    with httpx.stream("GET", f"{url}/v1/events/stream", headers=headers, timeout=30) as r:
        yield r


def test_streams_past_the_key_and_tenant_quotas_are_refused_and_a_closed_one_frees_its_slot(
    quota_url: str, tenant: Tenant, admin: httpx.Client
) -> None:
    with contextlib.ExitStack() as open_streams:
        first = open_streams.enter_context(_stream(quota_url, tenant, Role.VIEWER))
        second = open_streams.enter_context(_stream(quota_url, tenant, Role.VIEWER))
        assert (first.status_code, second.status_code) == (200, 200)
        with _stream(quota_url, tenant, Role.VIEWER) as third:
            third.read()
            _refused(third, 429, "streams_per_key")
        other = open_streams.enter_context(_stream(quota_url, tenant, Role.OPERATOR))
        assert other.status_code == 200
        with _stream(quota_url, tenant, Role.ADMIN) as fourth:
            fourth.read()
            _refused(fourth, 429, "streams_per_tenant")
        first.close()

        def reopened() -> bool:
            with _stream(quota_url, tenant, Role.VIEWER) as again:
                return again.status_code == 200

        # The client left: the replica's stream ends and its slot is free again (well
        # before the lease would expire on its own).
        # The client left: Serve cancels its request and the slot is given back then,
        # well before the lease would expire on its own (40-60 s after its last renewal).
        wait_until(reopened, 20, "the closed stream's slot to be freed")


def test_a_websocket_past_the_quota_closes_with_4429_naming_it(
    quota_url: str, tenant: Tenant, admin: httpx.Client
) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    eid = _run(admin, _echo_flow("ws-flow"))["id"]
    ws_url = quota_url.replace("http", "ws", 1) + f"/v1/ws/executions/{eid}"
    headers = tenant.headers(Role.VIEWER)
    with (
        _stream(quota_url, tenant, Role.VIEWER),
        _stream(quota_url, tenant, Role.VIEWER),
        connect(ws_url, additional_headers=headers) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    assert "streams_per_key" in closed.value.rcvd.reason


# -- stored data ----------------------------------------------------------------------------


def _names(admin: httpx.Client) -> list[str]:
    items = admin.get("/v1/data", params={"limit": 100}).json()["items"]
    return sorted(item["metadata"]["name"] for item in items)


def test_storage_quotas_answer_507_and_the_write_is_absent(admin: httpx.Client) -> None:
    big = {"data": {"text": "x" * 50_000}, "metadata": {"name": "big"}}
    _refused(admin.post("/v1/data", json=big), 507, "stored_bytes")
    made = []
    for n in range(QUOTAS.stored_objects):
        response = admin.post("/v1/data", json={"data": {"n": n}, "metadata": {"name": f"o{n}"}})
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    extra = {"data": {"n": 99}, "metadata": {"name": "extra"}}
    _refused(admin.post("/v1/data", json=extra), 507, "stored_objects")
    assert _names(admin) == ["o0", "o1", "o2"]  # neither "big" nor "extra"
    assert admin.delete(f"/v1/data/{made[0]}").status_code == 200
    assert admin.post("/v1/data", json=extra).status_code == 201
    for oid in admin.get("/v1/data", params={"limit": 100}).json()["items"]:
        admin.delete(f"/v1/data/{oid['id']}")


# -- replicas -------------------------------------------------------------------------------


def _agent_ids(admin: httpx.Client) -> set[str]:
    return {a["spec"]["name"] for a in admin.get("/v1/agents").json()["agents"]}


def test_the_replica_quota_trips_on_apply_and_on_scale(admin: httpx.Client) -> None:
    two = {**ECHO, "name": "echo-two", "replicas": {"min": 2, "max": 2}}
    _refused(admin.post("/v1/agents", json=two), 429, "replicas")
    assert "echo-two" not in _agent_ids(admin)
    _refused(admin.post("/v1/agents/echo/scale", json={"replicas": 3}), 429, "replicas")
    assert admin.post("/v1/agents/echo/scale", json={"replicas": 2}).status_code == 200
    _refused(admin.post("/v1/agents", json={**ECHO, "name": "echo-one"}), 429, "replicas")
    assert admin.post("/v1/agents/echo/scale", json={"replicas": 1}).status_code == 200


# -- workflows ------------------------------------------------------------------------------


def _echo_flow(name: str, **step: Any) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [{"id": "s", "uses": "test.echo", "with": {"text": "a"}, **step}],
    }


def _run(admin: httpx.Client, flow: dict[str, Any] | None, name: str = "") -> dict[str, Any]:
    if flow is not None:
        assert admin.post("/v1/workflows", json=flow).status_code == 201
    response = admin.post(
        "/v1/executions",
        json={"workflow": name or (flow or {})["name"]},
        params={"wait": "true", "timeout_s": 60},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_fan_out_over_the_item_quota_fails_naming_it(admin: httpx.Client) -> None:
    flow = _echo_flow("fan-over", for_each={"items": "[1, 2, 3, 4]"})
    done = _run(admin, flow)
    assert done["status"] == "failed" and "'for_each_items' (3)" in done["error"]["message"]
    assert not [k for k in done["steps"] if k.startswith("s[")]  # no item was started


def test_a_to_b_to_a_stops_at_the_depth_quota_naming_the_chain(admin: httpx.Client) -> None:
    assert admin.post("/v1/workflows", json=_echo_flow("loop-b")).status_code == 201
    call_b = {"name": "loop-a", "steps": [{"id": "call", "uses": "workflow:loop-b"}]}
    call_a = {"name": "loop-b", "steps": [{"id": "call", "uses": "workflow:loop-a"}]}
    assert admin.post("/v1/workflows", json=call_b).status_code == 201
    assert admin.post("/v1/workflows", json=call_a).status_code == 201
    done = _run(admin, None, "loop-a")
    assert done["status"] == "failed"
    assert "'workflow_depth' (2)" in done["error"]["message"]
    assert "loop-a -> loop-b -> loop-a -> loop-b" in done["error"]["message"]


def test_eight_nested_maps_are_refused_within_a_second_of_evaluation(
    admin: httpx.Client,
) -> None:
    flow = {"name": "bomb", "steps": [{"id": "s", "uses": "test.echo",
                                       "with": {"text": "${{ string(" + EIGHT_MAPS + ") }}"}}]}  # fmt: skip
    done = _run(admin, flow)
    assert done["status"] == "failed"
    assert "'expression_steps'" in done["error"]["message"] or (
        "'expression_timeout_s'" in done["error"]["message"]
    )
    # Measured by the supervisor's own clock, from the start to the failure: the budget
    # stops the evaluation, not the 10^8 steps (bound generous on purpose; shared machine).
    assert done["updated_at"] - done["created_at"] < 10


def test_executions_running_quota_refuses_one_more_until_one_ends(admin: httpx.Client) -> None:
    gated = _echo_flow("held", approval={"prompt": "go?"})
    assert admin.post("/v1/workflows", json=gated).status_code == 201
    held = [admin.post("/v1/executions", json={"workflow": "held"}) for _ in range(3)]
    assert [r.status_code for r in held] == [202, 202, 202]
    _refused(admin.post("/v1/executions", json={"workflow": "held"}), 429, "executions_running")
    admin.post(f"/v1/executions/{held[0].json()['id']}/cancel")

    def room() -> bool:
        response = admin.post("/v1/executions", json={"workflow": "held"})
        if response.status_code == 202:
            admin.post(f"/v1/executions/{response.json()['id']}/cancel")
        return response.status_code == 202

    wait_until(room, 30, "a slot after the cancel")
    for execution in held[1:]:
        admin.post(f"/v1/executions/{execution.json()['id']}/cancel")
    deadline = time.monotonic() + 30
    while admin.get("/v1/executions", params={"status": "waiting_approval"}).json()["executions"]:
        assert time.monotonic() < deadline, "the held executions did not end"
        time.sleep(0.2)
