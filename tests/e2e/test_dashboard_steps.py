"""The execution page's step controls in headless Chromium against Serve: an operator
cancels one waiting step (it shows cancelled, the execution goes on) and sends the other
its signal with a JSON payload (the execution ends with that payload as its output)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from cluster.auth.models import Role
from cluster.auth.security import Security
from tests.e2e.test_dashboard import CHROMIUM_ARGS, PASSWORD, Scene
from tests.integration.conftest import kill_tenant
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=30_000)

WAITS = {
    "name": "dash-waits",
    "steps": [{"id": "go", "wait": {"signal": "go"}}, {"id": "more", "wait": {"signal": "more"}}],
    "outputs": {"said": "${{ steps.go.output.said }}"},
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(api_url: str, security: Security) -> Iterator[dict[str, Any]]:
    tenant = f"dashs{uuid.uuid4().hex[:6]}"
    security.users.create_user(tenant, "ops", PASSWORD, Role.OPERATOR)
    admin = {"Authorization": f"Bearer {security.keys.create_api_key(tenant, Role.ADMIN, 'a')[1]}"}
    with httpx.Client(base_url=api_url, headers=admin, timeout=60) as http:
        assert http.post("/v1/workflows", json=WAITS).status_code == 201
        yield {"tenant": tenant, "http": http, "url": api_url}
    kill_tenant(tenant)


def test_an_operator_cancels_a_step_and_signals_another(site: dict[str, Any], browser: Any) -> None:
    http = site["http"]
    started = http.post("/v1/executions", json={"workflow": WAITS["name"]})
    assert started.status_code == 202, started.text
    eid = started.json()["id"]
    scene = Scene(browser, site["url"])
    page = scene.page
    scene.login(site["tenant"], "ops")
    scene.go(f"/executions/{eid}")
    scene.ready(f"/executions/{eid}")

    page.get_by_role("button", name="Cancel more").click()
    expect(page.locator("#step-controls li[data-step='more']")).to_have_count(0)
    wait_until(lambda: http.get(f"/v1/executions/{eid}").json()["steps"]["more"]["status"]
               == "cancelled", 30, "the step cancelled in the record")  # fmt: skip
    scene.shot("step-cancelled")

    page.get_by_label("Payload for go").fill('{"said": "from the page"}')
    page.get_by_role("button", name="Send signal to go").click()
    done = wait_until(lambda: _ended(http, eid), 60, "the execution to end")
    assert done is not None
    assert done["status"] == "succeeded", done
    expect(page.locator("#execution-status")).to_have_attribute("data-status", "succeeded")
    assert done["outputs"] == {"said": "from the page"}
    assert done["steps"]["more"]["status"] == "cancelled"
    assert not scene.errors, scene.errors


def _ended(http: httpx.Client, eid: str) -> dict[str, Any] | None:
    execution: dict[str, Any] = http.get(f"/v1/executions/{eid}").json()
    return execution if execution["status"] in ("succeeded", "failed", "cancelled") else None
