"""The web dashboard in headless Chromium against Serve on its free port: log in (with TOTP),
watch an execution run live, approve a gate, pause and resume, scale a pool, a viewer
refused, phone width, no console errors. Screenshots go to test-artifacts/dashboard/."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.sync_api import expect, sync_playwright

from cluster.auth.models import Role
from cluster.auth.security import Security
from tests.conftest import SCRAPER
from tests.integration.conftest import kill_tenant

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=30_000)  # as long as the page's own waits: the machine is loaded

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
PASSWORD = "correct horse battery"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
STEPPER = {
    "name": "stepper",
    "version": "1.0.0",
    "capabilities": ["test.step"],
    "entrypoint": "tests.fixtures.agents:step",
    "replicas": {"min": 1, "max": 3},
    "max_concurrency": 16,
}
SLEEP = "${{ inputs.seconds }}"
FLOW = {
    "name": "dash-flow",
    "inputs": {"seconds": {"type": "number", "default": 0.5}},
    "steps": [
        {"id": "fetch", "uses": "test.step", "with": {"value": 1, "seconds": SLEEP}},
        {"id": "left", "uses": "test.step", "needs": ["fetch"], "with": {"seconds": SLEEP}},
        {"id": "right", "uses": "test.step",
         "with": {"value": "${{ steps.fetch.output }}", "seconds": SLEEP}},
        {"id": "merge", "uses": "test.step", "needs": ["left", "right"], "with": {"value": 7}},
    ],
}  # fmt: skip
GATE = {
    "name": "dash-gate",
    "steps": [
        {"id": "prepare", "uses": "test.step", "with": {"value": 1}},
        {"id": "ship", "uses": "test.step", "needs": ["prepare"],
         "approval": {"prompt": "Ship it?"}, "with": {"value": 2}},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def site(api_url: str, security: Security) -> Iterator[dict[str, Any]]:
    """A tenant with an operator (TOTP on), a viewer, the stepper agent and two workflows."""
    tenant = f"dash{uuid.uuid4().hex[:6]}"
    security.users.create_user(tenant, "ops", PASSWORD, Role.OPERATOR)
    totp = security.users.enable_totp(tenant, "ops").secret
    security.users.create_user(tenant, "watcher", PASSWORD, Role.VIEWER)
    admin = {"Authorization": f"Bearer {security.keys.create_api_key(tenant, Role.ADMIN, 'a')[1]}"}
    with httpx.Client(base_url=api_url, headers=admin, timeout=60) as http:
        assert http.post("/v1/agents", json=STEPPER).status_code == 200
        for spec in (FLOW, GATE):
            assert http.post("/v1/workflows", json=spec).status_code == 201
        assert http.post("/v1/topics/news/messages", json={"payload": {"n": 1}}).is_success
        stored = http.post("/v1/data", json={"metadata": {"name": "doc"}, "data": {"x": 1}})
        assert stored.status_code == 201, stored.text
        yield {"tenant": tenant, "totp": totp, "http": http, "url": api_url}
    kill_tenant(tenant)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Scene:
    """One page in the browser, its console errors collected, and screenshots by name."""

    def __init__(self, browser: Any, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1366, "height": 900})
        self.page.set_default_timeout(30_000)
        self.url = url
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def go(self, route: str) -> None:
        self.page.goto(f"{self.url}/#{route}")

    def ready(self, route: str) -> None:
        """Wait until the page of `route` has shown its data (its first load has ended)."""
        self.page.locator(f"main[data-route='{route}'][data-ready=true]").wait_for()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def login(self, tenant: str, username: str, code: str | None = None) -> None:
        self.go("/login")
        self.page.get_by_label("Tenant").fill(tenant)
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(PASSWORD)
        if code:
            self.page.get_by_label("One-time code").fill(code)
        self.page.get_by_role("button", name="Log in").click()
        self.page.get_by_role("heading", name="Overview").wait_for()

    def no_horizontal_overflow(self) -> bool:
        return bool(self.page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        ))  # fmt: skip


def start(site: dict[str, Any], workflow: str, inputs: dict[str, Any] | None = None) -> str:
    body = {"workflow": workflow, "inputs": inputs or {}}
    started = site["http"].post("/v1/executions", json=body)
    assert started.status_code == 202, started.text
    return str(started.json()["id"])


WATCH_NODES = """() => {
  window.seen = {};
  const record = (g) => {
    const step = g.dataset.step, fill = getComputedStyle(g.querySelector('rect')).fill;
    (window.seen[step] ||= []).push([g.dataset.status, fill]);
  };
  document.querySelectorAll('g.node').forEach(record);
  new MutationObserver((changes) => changes.forEach((c) => record(c.target)))
    .observe(document.querySelector('svg.graph'), {subtree: true, attributeFilter: ['data-status']});
}"""


def test_an_operator_runs_the_platform_from_the_dashboard(
    browser: Any, site: dict[str, Any]
) -> None:
    scene = Scene(browser, site["url"])
    page = scene.page
    scene.go("/overview")
    page.get_by_role("heading", name="Log in to DafnckMachine").wait_for()
    scene.shot("login")
    scene.login(site["tenant"], "ops", pyotp.TOTP(site["totp"]).now())
    page.locator("[data-stat=nodes]").wait_for()
    assert int(page.locator("[data-stat=nodes]").inner_text()) >= 1
    page.get_by_role("cell", name="stepper@1.0.0").wait_for()
    scene.shot("overview")

    # A workflow drawn from its needs, run from its page, watched live until it succeeds.
    page.get_by_role("link", name="Workflows").click()
    page.get_by_role("link", name="dash-flow").click()
    expect(page.locator("g.node")).to_have_count(4)
    expect(page.locator("path.edge")).to_have_count(4)
    scene.shot("workflow")
    page.get_by_label("Inputs (JSON)").fill('{"seconds": 1.5}')
    page.get_by_role("button", name="Run").click()
    page.locator("#execution-status").wait_for()
    page.evaluate(WATCH_NODES)
    page.locator("#execution-status[data-status=succeeded]").wait_for()
    page.locator("g.node[data-step=merge][data-status=succeeded]").wait_for()
    seen = page.evaluate("window.seen")
    statuses = {step: [status for status, _ in changes] for step, changes in seen.items()}
    assert any("running" in s for s in statuses.values()), seen  # watched while it ran
    assert all(s[-1] == "succeeded" for s in statuses.values()), seen
    fills = {status: fill for step in seen.values() for status, fill in step}
    assert len({fills["pending"], fills["running"], fills["succeeded"]}) == 3, fills  # colours
    page.locator("ol.events li[data-type='execution.succeeded']").wait_for()
    # The timeline comes from the execution's trace: a span per step, under the execution's.
    page.get_by_text("From the execution's trace").wait_for()
    for step in ("fetch", "left", "right", "merge"):
        expect(page.locator(".tl-label", has_text=f"step {step}")).to_have_count(1)
    page.locator("g.node[data-step=right]").focus()  # the keyboard selects a step too
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Step right").wait_for()
    assert page.locator(".step-details pre.json").last.inner_text().strip() == "3"
    scene.shot("execution")

    # A gated step waits; the operator approves it with a reason.
    gated = start(site, "dash-gate")
    scene.go(f"/executions/{gated}")
    page.get_by_role("button", name="Approve ship").wait_for()
    page.get_by_label("Reason").fill("looks right")
    page.get_by_role("button", name="Approve ship").click()
    page.locator("#execution-status[data-status=succeeded]").wait_for()
    approval = site["http"].get(f"/v1/executions/{gated}").json()["steps"]["ship"]["approval"]
    assert (approval["decision"], approval["by"], approval["reason"]) == (
        "approved", "ops", "looks right",
    )  # fmt: skip
    scene.shot("approval")

    # Rejected (the execution fails), retried (the gate waits again), then cancelled.
    refused = start(site, "dash-gate")
    scene.go(f"/executions/{refused}")
    page.get_by_label("Reason").fill("not today")
    page.get_by_role("button", name="Reject ship").click()
    page.locator("#execution-status[data-status=failed]").wait_for()
    page.locator("g.node[data-step=ship]").click()
    page.get_by_text("Rejected:").wait_for()
    page.get_by_role("button", name="Retry").click()
    page.get_by_role("button", name="Approve ship").wait_for()
    page.get_by_label("Reason").fill("changed my mind")
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.locator("#execution-status[data-status=cancelled]").wait_for()
    record = site["http"].get(f"/v1/executions/{refused}").json()
    assert record["error"]["message"] == "changed my mind", record

    # Pause while it runs: running steps finish, nothing new starts until resumed.
    slow = start(site, "dash-flow", {"seconds": 2.0})
    scene.go(f"/executions/{slow}")
    expect(page.get_by_role("button", name="Pause")).to_be_enabled()
    page.get_by_role("button", name="Pause").click()
    page.locator("#execution-status[data-status=paused]").wait_for()
    expect(page.locator("g.node[data-status=running]")).to_have_count(0)
    time.sleep(0.5)  # a paused execution starts no step: the last one stays pending
    assert page.locator("g.node[data-step=merge]").get_attribute("data-status") == "pending"
    page.get_by_role("button", name="Resume").click()
    page.locator("#execution-status[data-status=succeeded]").wait_for()
    scene.shot("paused-resumed")

    # Scale the pool; the running replicas follow.
    page.get_by_role("link", name="Agents").click()
    page.get_by_label("replicas of stepper").fill("2")
    page.get_by_role("button", name="Scale").click()
    page.locator("[data-running='2']").wait_for()
    scene.shot("agents")

    for route, heading in [("/messages", "Messages"), ("/data", "Data")]:
        scene.go(route)
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        if route == "/messages":
            page.get_by_label("Name").fill("news")
            page.get_by_role("button", name="Show").click()
            page.get_by_role("cell", name='{"n":1}').wait_for()
        else:
            page.get_by_role("cell", name="doc", exact=True).wait_for()
        scene.shot(route.strip("/"))

    # A phone's width: every page readable without scrolling sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    for route in ["/overview", "/agents", "/workflows/dash-flow", f"/executions/{slow}",
                  "/executions", "/messages", "/data"]:  # fmt: skip
        scene.go(route)
        scene.ready(route)
        assert scene.no_horizontal_overflow(), route
        scene.shot("phone-" + route.split("/")[1])

    page.get_by_role("button", name="Log out").click()
    page.get_by_text("You are logged out.").wait_for()
    assert scene.no_horizontal_overflow()
    scene.shot("phone-login")
    assert scene.errors == []
    page.close()


def test_a_viewer_sees_but_is_refused_and_the_session_expires(
    browser: Any, site: dict[str, Any]
) -> None:
    scene = Scene(browser, site["url"])
    page = scene.page
    scene.login(site["tenant"], "watcher")
    page.get_by_role("link", name="Agents").click()
    scale = page.get_by_role("button", name="Scale")
    assert scale.is_disabled() and "may not agents:write" in (scale.get_attribute("title") or "")
    # The server refuses anyway: force the button as a stale or tampered page would.
    scale.evaluate("b => { b.disabled = false; }")
    scale.click()
    refused = page.get_by_role("alert")
    refused.get_by_text("403 Forbidden").wait_for()
    assert "viewer" in refused.inner_text()
    scene.shot("viewer-refused")
    assert all("403" in e for e in scene.errors) and len(scene.errors) == 1, scene.errors

    # The session ends with the token's lifetime: back to the login page.
    page.evaluate("""() => {
      const s = JSON.parse(sessionStorage.getItem('dafnck.session'));
      sessionStorage.setItem('dafnck.session', JSON.stringify({...s, expiresAt: Date.now() - 1}));
    }""")
    page.get_by_role("link", name="Executions").click()
    page.get_by_text("Your session has expired").wait_for()
    page.close()


def test_the_api_keeps_its_paths_and_the_pages_their_files(site: dict[str, Any]) -> None:
    http = site["http"]
    index = httpx.get(f"{site['url']}/")
    assert index.status_code == 200 and "<title>DafnckMachine</title>" in index.text
    assert httpx.get(f"{site['url']}/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{site['url']}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{site['url']}/openapi.json").json()["info"]["title"] == "DafnckMachine"
    missing = httpx.get(f"{site['url']}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "HTTPError"
    assert httpx.post(f"{site['url']}/index.html").status_code == 404
    assert http.get("/metrics", headers=SCRAPER).status_code == 200
    graph = http.get("/v1/workflows/dash-flow/graph").json()
    needs = {s["id"]: s["needs"] for s in graph["steps"]}
    assert needs == {"fetch": [], "left": ["fetch"], "right": ["fetch"], "merge": ["left", "right"]}
    me = http.get("/v1/me").json()
    assert me["role"] == "admin" and "agents:write" in me["permissions"]
    assert me["features"] == {"trace": True}
    before = http.get("/v1/overview").json()
    done = http.post("/v1/executions", params={"wait": "true"},
                     json={"workflow": "dash-flow", "inputs": {"seconds": 0.2}})  # fmt: skip
    assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
    deadline = time.monotonic() + 30  # replicas' counters reach the supervisor by its probes
    while True:
        after = http.get("/v1/overview").json()
        ran = after["tasks"]["completed"] - before["tasks"]["completed"]
        if ran >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after["ray"]["nodes"] >= 1 and after["ray"]["resources"]["CPU"] > 0
    assert after["tasks"]["completed"] - before["tasks"]["completed"] >= 4
    assert after["tasks"]["busy_s"] - before["tasks"]["busy_s"] >= 0.6  # 3 steps of 0.2 s
    counts = after["executions"]["counts"]
    assert counts["succeeded"] == before["executions"]["counts"]["succeeded"] + 1
    machine = http.post("/v1/keys", json={"role": "agent", "name": "bot"}).json()["secret"]
    seen_by_agent = httpx.get(f"{site['url']}/v1/overview", headers={"X-API-Key": machine})
    assert seen_by_agent.status_code == 200 and seen_by_agent.json()["executions"] is None
