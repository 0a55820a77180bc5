"""`Idempotency-Key` over real HTTP through Serve: an answer is replayed only to the principal
that got it, and answers holding secrets (a new API key) are never stored."""

from __future__ import annotations

import uuid

import httpx

from cluster.auth.models import Role
from cluster.auth.security import Security
from tests.e2e.conftest import Tenant


def _idempotency_records(security: Security, tenant: str) -> dict[str, str]:
    redis = security.keys.store.redis
    pattern = security.keys.store.for_tenant(tenant).key("idempotency", "*")
    return {key: redis.get(key) or "" for key in redis.scan_iter(match=pattern)}


def test_an_agent_replaying_the_admins_key_creation_gets_403_and_no_secret(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], security: Security
) -> None:
    tenant = tenants[0]
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"role": "viewer", "name": f"idem-{uuid.uuid4().hex[:6]}"}
    created = http.post("/v1/keys", json=body, headers={**tenant.headers(Role.ADMIN), **idem})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]

    replay = http.post("/v1/keys", json=body, headers={**tenant.headers(Role.AGENT), **idem})

    assert replay.status_code == 403, replay.text
    assert secret not in replay.text and "idempotent-replayed" not in replay.headers
    records = _idempotency_records(security, tenant.name)
    assert not any(secret in value for value in records.values())
    # The admin's own retry has no second effect, and the secret was not kept to replay.
    admin = tenant.headers(Role.ADMIN)
    count = len(http.get("/v1/keys", headers=admin).json())
    again = http.post("/v1/keys", json=body, headers={**admin, **idem})
    assert again.status_code == 409 and again.json()["error"]["type"] == "IdempotencyAnswerNotKept"
    assert secret not in again.text
    assert len(http.get("/v1/keys", headers=admin).json()) == count
    assert any(
        '"withheld": true' in v for v in _idempotency_records(security, tenant.name).values()
    )


def test_a_stored_answer_is_replayed_to_its_principal_only(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], security: Security
) -> None:
    tenant = tenants[0]
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    before = set(_idempotency_records(security, tenant.name))
    operator = {**tenant.headers(Role.OPERATOR), **idem}
    first = http.post("/v1/agents/nope/scale", json={"replicas": 1}, headers=operator)
    assert first.status_code == 404, first.text
    assert len(set(_idempotency_records(security, tenant.name)) - before) == 1  # it was stored

    admin = {**tenant.headers(Role.ADMIN), **idem}
    other = http.post("/v1/agents/nope/scale", json={"replicas": 1}, headers=admin)
    assert other.status_code == 404 and "idempotent-replayed" not in other.headers

    mine = http.post("/v1/agents/nope/scale", json={"replicas": 1}, headers=operator)
    assert mine.headers.get("idempotent-replayed") == "true"
    assert mine.status_code == 404 and mine.json() == first.json()
