"""Schemathesis over the OpenAPI document, through Serve over real HTTP: no input may
produce a server error, and every answer has a documented status code, content type and
body schema (zero schema violations). Live streams are left out (they never end
on their own) and so is restore (it needs an empty tenant). A second run sends every
execution route to a seeded execution whose step output holds an Arrow table.

Runs the schemathesis CLI (its pytest plugin does not load with this pytest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cluster.auth.models import Role
from tests.e2e.conftest import Tenant
from tests.integration.helpers import REPO_ROOT

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
#: No server error, and every answer as the document declares it: its status code, its
#: content type and its body's schema.
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance",
])  # fmt: skip


def _schemathesis(api_url: str, key: str, *options: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [
            SCHEMATHESIS, "run", f"{api_url}/openapi.json",
            "-H", f"Authorization: Bearer {key}",
            "--checks", CHECKS,
            "--request-timeout", "30",
            "--seed", "1",
            *options,
        ],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    start = done.stdout.find("FAILURES")
    assert done.returncode == 0, done.stdout[max(start, 0) :][:6000]
    assert "0 generated" not in done.stdout
    return done.stdout


def test_no_server_error_and_every_answer_as_documented(
    api_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    key = tenants[0].keys[Role.ADMIN]
    _schemathesis(
        api_url, key, "--max-examples", "5", "--exclude-path-regex", "stream|/ws/|restore"
    )


def _execution_with_a_table(api_url: str, key: str) -> str:
    """A succeeded execution whose one step answered an Arrow table."""
    agent = {"name": "tables", "version": "1.0.0", "capabilities": ["test.table"],
             "entrypoint": "tests.fixtures.agents:table"}  # fmt: skip
    workflow = {"name": "tables", "steps": [{"id": "t", "uses": "test.table", "with": {"rows": 4}}]}
    with httpx.Client(
        base_url=api_url, timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        assert http.post("/v1/agents", json=agent).status_code == 200
        assert http.post("/v1/workflows", json=workflow).status_code in (200, 201)
        started = http.post("/v1/executions", json={"workflow": "tables", "inputs": {}})
        assert started.status_code in (200, 202), started.text
        eid = str(started.json()["id"])
        deadline = time.monotonic() + 60
        while (status := http.get(f"/v1/executions/{eid}").json()["status"]) != "succeeded":
            assert status in ("pending", "running") and time.monotonic() < deadline, status
            time.sleep(0.2)
    return eid


def test_execution_routes_on_an_execution_with_arrow_outputs(
    api_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    key = tenants[0].keys[Role.ADMIN]
    eid = _execution_with_a_table(api_url, key)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
        "DAFNCK_SEEDED_EXECUTION": eid,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    out = _schemathesis(
        api_url,
        key,
        "--max-examples",
        "3",
        "--include-path-regex",
        r"^/v1/executions/\{execution_id\}",
        "--exclude-path-regex",
        "stream|restore",
        "--exclude-method",
        "DELETE",
        env=env,
    )
    assert "executions/{execution_id}" in out
    # The execution itself was read (schemathesis lists operations that only ever got 404).
    assert "  - GET /v1/executions/{execution_id}\n" not in out
