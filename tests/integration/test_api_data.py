"""Data objects and backups over the ASGI app: If-Match conflicts, queries, backups; roles
and tenants."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from cluster.auth.models import Role
from tests.integration import test_api_executions as shared
from tests.integration.test_api_executions import Keys

api, keys = shared.api, shared.keys  # fixtures
pytestmark = pytest.mark.timeout(120)


def test_data_objects_with_if_match_queries_and_backups(api: TestClient, keys: Keys) -> None:
    admin, viewer = keys(), keys(Role.VIEWER)
    body = {"data": {"a": 1}, "metadata": {"name": "doc", "tags": ["x"], "fields": {"n": 3}}}
    created = api.post("/v1/data", json=body, headers=admin)
    assert created.status_code == 201
    oid = created.json()["id"]
    got = api.get(f"/v1/data/{oid}", headers=viewer)
    assert got.json()["data"] == {"a": 1} and got.headers["etag"] == '"1"'
    url = f"/v1/data/{oid}"
    assert api.patch(url, json={"data": {"b": 2}}, headers=admin).status_code == 428
    changed = api.patch(url, json={"data": {"b": 2}}, headers={**admin, "If-Match": '"1"'})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    stale = api.patch(url, json={"data": {"c": 3}}, headers={**admin, "If-Match": "1"})
    assert stale.status_code == 409 and "version 2" in stale.json()["error"]["message"]
    assert api.get(url, headers=admin).json()["data"] == {"a": 1, "b": 2}
    assert api.post("/v1/data", json=body, headers=viewer).status_code == 403
    assert (
        api.post("/v1/data", json={"data": 1, "metadata": {"name": ""}}, headers=admin).status_code
        == 422
    )

    def found(query: str) -> list[str]:
        answer = api.get(f"/v1/data?{query}", headers=viewer)
        assert answer.status_code == 200, answer.text
        return [o["id"] for o in answer.json()["items"]]

    assert found("tag=x&field.n=3") == [oid]
    assert found('field.n="3"') == [] and found("tag=y") == []
    assert found("since=0&until=1") == []
    assert api.get("/v1/data?cursor=garbage", headers=viewer).status_code == 422

    other = keys(tenant="other" + uuid.uuid4().hex[:6])
    assert api.get(url, headers=other).status_code == 404
    assert api.patch(url, json={"data": {}}, headers={**other, "If-Match": "2"}).status_code == 404

    backup = api.post("/v1/backups", json={"label": "nightly"}, headers=admin)
    assert backup.status_code == 201
    backup_id = backup.json()["info"]["backup_id"]
    listed = api.get("/v1/backups", headers=admin).json()["backups"]
    assert [(b["backup_id"], b["label"]) for b in listed] == [(backup_id, "nightly")]
    assert api.get("/v1/backups", headers=viewer).status_code == 403
    assert api.post(f"/v1/backups/{backup_id}/restore", headers=admin).status_code == 409

    assert api.delete(url, headers=admin).status_code == 200
    assert api.get(url, headers=admin).status_code == 404
    assert api.delete(url, headers=admin).status_code == 404
