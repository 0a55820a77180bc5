"""The dashboard shows the README demo's execution: the review workflow, whose steps answer
with Arrow tables, opens in headless Chromium with each table listed as rows, columns and
the Parquet file that keeps it (the API could not serialise it before, and the page was
blank). Screenshot: test-artifacts/dashboard/execution-tables.png."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from actors.client import load_agent_specs
from actors.examples.review import review_specs
from cluster.auth.models import Role
from cluster.auth.security import Security
from tests.e2e.test_dashboard import PASSWORD, Scene, browser  # noqa: F401 (a fixture)
from tests.integration.conftest import kill_tenant
from tests.integration.helpers import REPO_ROOT
from workflows.loader import load_workflow_specs

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def review(
    api_url: str, security: Security, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A tenant with a viewer and one review execution of a two-file workspace, ended."""
    workspace = tmp_path_factory.mktemp("dashws")
    (workspace / "a.py").write_text("def f(x):\n    return x\n")
    (workspace / "b.py").write_text("class C:\n    pass\n")
    tenant = f"dasht{uuid.uuid4().hex[:6]}"
    security.users.create_user(tenant, "watcher", PASSWORD, Role.VIEWER)
    admin = {"Authorization": f"Bearer {security.keys.create_api_key(tenant, Role.ADMIN, 'a')[1]}"}
    specs = review_specs(load_agent_specs(REPO_ROOT / "configs/agents/review.yaml"), workspace)
    ((workflow, _),) = load_workflow_specs(REPO_ROOT / "configs/workflows/review.yaml")
    with httpx.Client(base_url=api_url, headers=admin, timeout=120) as http:
        for spec in specs:
            assert http.post("/v1/agents", json=spec.model_dump(mode="json")).status_code == 200
        body = workflow.model_dump(mode="json", by_alias=True)
        assert http.post("/v1/workflows", json=body).status_code == 201
        done = http.post(
            "/v1/executions", params={"wait": "true"}, json={"workflow": "review"}
        ).json()
        assert done["status"] == "succeeded", done
        yield {"tenant": tenant, "url": api_url, "execution": done}
    kill_tenant(tenant)


def test_the_review_demos_execution_shows_its_tables(browser: Any, review: dict[str, Any]) -> None:  # noqa: F811
    scene = Scene(browser, review["url"])
    page = scene.page
    scene.login(review["tenant"], "watcher")
    execution = review["execution"]
    scene.go(f"/executions/{execution['id']}")
    page.locator("#execution-status[data-status=succeeded]").wait_for()
    outputs = page.locator("#execution-outputs")
    expect(outputs.locator("pre.json")).to_contain_text('"files": 2')  # the report's summary

    page.locator("g.node[data-step=analyse]").focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Step analyse").wait_for()
    tables = page.locator(".step-details table")
    expect(tables.locator("caption")).to_contain_text("4 Arrow tables")
    rows = tables.locator("tbody tr")
    expect(rows).to_have_count(4)  # functions and files of each of the two files
    files = rows.filter(has_text="output[0].files")
    expect(files.locator("td[data-label=Rows]")).to_have_text("1")
    expect(files.locator("td[data-label=Columns]")).to_have_text(
        "path, lines, functions, classes, todos, error"
    )
    stored = execution["steps"]["analyse"]["output"][0]["files"]["$table"]["stored_at"]
    expect(files.locator("td[data-label='Stored at']")).to_have_text(stored)
    scene.shot("execution-tables")
    assert not scene.errors, scene.errors
