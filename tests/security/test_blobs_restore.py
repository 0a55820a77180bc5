"""Blobs and restores as a tenant would attack them, over real HTTP through Serve:

- an agent returning `{"$arrow": "<path>"}` made the platform read any Parquet file on the
  host (another tenant's step outputs, backups holding key and password hashes);
- restoring a backup over a live tenant brought a revoked API key back to life and cut
  the revocation out of the audit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.auth.models import AuditEntry, Role
from cluster.auth.security import Security
from cluster.settings import Settings
from cluster.store import connect_store
from tests.e2e.conftest import Tenant
from tests.integration.conftest import kill_tenant
from workflows.store import BlobStore, ExecutionStore

MARKER_AGENT = {
    "name": "marker",
    "version": "1.0.0",
    "capabilities": ["test.arrow_marker"],
    "entrypoint": "tests.fixtures.agents:arrow_marker",
}
MARKER_FLOW = {
    "name": "marker-flow",
    "inputs": {"path": {"type": "string"}},
    "outputs": {"out": "${{ steps.m.output }}"},
    "steps": [{"id": "m", "uses": "test.arrow_marker", "with": {"path": "${{ inputs.path }}"}}],
}


@pytest.fixture
def fresh(security: Security) -> Iterator[tuple[Tenant, dict[Role, str]]]:
    """A tenant of this test alone (its keys get revoked), with a key per role and their ids."""
    name = f"sec{uuid.uuid4().hex[:8]}"
    made = {role: security.keys.create_api_key(name, role, f"{role}-key") for role in Role}
    yield (
        Tenant(name, {r: secret for r, (_, secret) in made.items()}),
        {r: key_id for r, (key_id, _) in made.items()},
    )
    kill_tenant(name)


def planted_output(blobs: str, tenant: str) -> Path:
    """A real Parquet file where the tenant's step outputs live."""
    path = Path(blobs) / tenant / "outputs" / uuid.uuid4().hex / "report" / "0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"secret": [f"{tenant}'s figures"]}), path)
    return path


def run_marker(http: httpx.Client, tenant: Tenant, path: str) -> dict[str, Any]:
    done = http.post(
        "/v1/executions",
        params={"wait": "true", "timeout_s": 120},
        json={"workflow": "marker-flow", "inputs": {"path": path}},
        headers=tenant.headers(Role.OPERATOR),
        timeout=150,
    )
    assert done.status_code == 200, done.text
    body: dict[str, Any] = done.json()
    assert body["status"] == "succeeded", body
    return body


def test_an_arrow_marker_from_an_agent_reads_nothing(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], e2e_settings: Settings
) -> None:
    victim, mallory = tenants
    secret = planted_output(e2e_settings.blobs, victim.name)
    op = mallory.headers(Role.OPERATOR)
    applied = http.post("/v1/agents", json=MARKER_AGENT, headers=op, timeout=120)
    assert applied.status_code == 200, applied.text
    assert http.post("/v1/workflows", json=MARKER_FLOW, headers=op).status_code == 201

    executions = ExecutionStore(
        connect_store(e2e_settings).for_tenant(mallory.name), BlobStore(e2e_settings.blobs)
    )
    relative = f"../../{victim.name}/outputs/{secret.relative_to(secret.parents[2])}"
    for path in (str(secret), relative, f"file://{secret}"):
        ended = run_marker(http, mallory, path)
        assert ended["steps"]["m"]["output"] == {"$arrow": path}
        assert ended["outputs"] == {"out": {"$arrow": path}}
        again = http.get(f"/v1/executions/{ended['id']}", headers=op)  # loaded from the store
        assert again.status_code == 200, again.text
        assert again.json()["steps"]["m"]["output"] == {"$arrow": path}
        stored = executions.load(ended["id"])  # what a recovering supervisor reads
        assert stored.steps["m"].output == {"$arrow": path}
    assert "figures" not in http.get("/v1/executions", headers=op).text


def test_backups_stay_under_each_tenants_root(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], e2e_settings: Settings
) -> None:
    a, b = tenants
    made = {}
    for tenant in tenants:
        answer = http.post("/v1/backups", json={"label": "x"}, headers=tenant.headers(Role.ADMIN))
        assert answer.status_code == 201, answer.text
        made[tenant.name] = answer.json()["info"]
    for tenant in tenants:
        info = made[tenant.name]
        where = Path(e2e_settings.blobs) / tenant.name / "backups" / info["backup_id"]
        assert info["uri"] == str(where) and (where / "manifest.json").exists()
    listed = http.get("/v1/backups", headers=b.headers(Role.ADMIN)).json()["backups"]
    assert made[a.name]["backup_id"] not in [x["backup_id"] for x in listed]
    stolen = http.post(
        f"/v1/backups/{made[a.name]['backup_id']}/restore",
        params={"into_empty": "false"},
        headers=b.headers(Role.ADMIN),
    )
    assert stolen.status_code == 404, stolen.text


def audit_of(security: Security, tenant: str) -> list[AuditEntry]:
    return security.audit.list(tenant, limit=1000).entries


def test_a_restore_never_brings_back_a_revoked_key(
    http: httpx.Client, security: Security, fresh: tuple[Tenant, dict[Role, str]]
) -> None:
    tenant, key_ids = fresh
    admin, operator = tenant.headers(Role.ADMIN), tenant.headers(Role.OPERATOR)
    viewer = tenant.headers(Role.VIEWER)
    made = http.post(
        "/v1/data", json={"data": {"n": 1}, "metadata": {"name": "doc"}}, headers=admin
    )
    assert made.status_code == 201, made.text
    url = f"/v1/data/{made.json()['id']}"
    backup = http.post("/v1/backups", headers=operator)  # taken while the viewer key works
    assert backup.status_code == 201, backup.text
    restore = f"/v1/backups/{backup.json()['info']['backup_id']}/restore"
    assert http.get(url, headers=viewer).status_code == 200

    revoked = http.delete(f"/v1/keys/{key_ids[Role.VIEWER]}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert http.get(url, headers=viewer).status_code == 401
    changed = http.patch(url, json={"data": {"n": 2}}, headers={**admin, "If-Match": "1"})
    assert changed.status_code == 200, changed.text
    before = audit_of(security, tenant.name)
    assert any(e.object == f"key:{key_ids[Role.VIEWER]}" for e in before)

    refused = http.post(restore, params={"into_empty": "false"}, headers=operator)
    assert refused.status_code == 403, refused.text
    assert http.get(url, headers=admin).json()["data"] == {"n": 2}  # nothing was restored

    done = http.post(restore, params={"into_empty": "false"}, headers=admin)
    assert done.status_code == 200, done.text
    assert http.get(url, headers=admin).json()["data"] == {"n": 1}  # the state is back...
    assert http.get(url, headers=viewer).status_code == 401  # ...and the key stays revoked

    after = audit_of(security, tenant.name)
    assert [e.id for e in after[: len(before)]] == [e.id for e in before]
    restores = [(e.role, e.outcome) for e in after if e.action == "backups:restore"]
    assert restores == [("operator", "denied"), ("admin", "started"), ("admin", "ok")]
