"""The review demo's agents, driven by the lowest role, stay in their workspace.

The operator registers the three agents of configs/agents/review.yaml in a tenant with a
workspace (as `dafnck demo` does); an `agent`-role key then asks them, over real HTTP
through Serve, to write a report outside it, through `..` or a planted symlink, to read
/dev/zero and /etc/passwd, and to list `/`. Each is refused and the file never appears.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.client import load_agent_specs
from actors.examples.review import review_specs
from cluster.auth.models import Role
from tests.e2e.conftest import Tenant
from tests.integration.helpers import REPO_ROOT

pytestmark = pytest.mark.timeout(240)
#: The agents are renamed so other modules' agents in the session's tenant are not reached.
PREFIX = f"conf{uuid.uuid4().hex[:4]}-"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("confine")
    ws = base / "ws"
    (ws / "pkg").mkdir(parents=True)
    (ws / "pkg" / "a.py").write_text("def f(x):\n    return x\n")
    (base / "outside").mkdir()
    return ws


@pytest.fixture(scope="module")
def agents(
    tenants: tuple[Tenant, Tenant], api_url: str, workspace: Path
) -> Iterator[dict[str, str]]:
    """The review agents, applied by the tenant's operator, confined to `workspace`."""
    tenant = tenants[0]
    specs = review_specs(
        load_agent_specs(REPO_ROOT / "configs" / "agents" / "review.yaml"),
        workspace,
        workspace / "reports" / "review.md",
    )
    names = {}
    for spec in specs:
        named = spec.model_copy(update={"name": PREFIX + spec.name})
        answer = httpx.post(
            f"{api_url}/v1/agents",
            json=named.model_dump(mode="json"),
            headers=tenant.headers(Role.OPERATOR),
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        names[spec.capabilities[0]] = named.name
    yield names
    for name in names.values():
        httpx.delete(
            f"{api_url}/v1/agents/{name}@1.0.0", headers=tenant.headers(Role.OPERATOR), timeout=60
        )


def as_agent(
    http: httpx.Client, tenant: Tenant, agents: dict[str, str], capability: str, **task: Any
) -> dict[str, Any]:
    """Run a task with the tenant's agent-role key: its result, or the API's refusal (422,
    an input the skill's schema does not take) as a failed one."""
    body = {"capability": capability, "agent": agents[capability], "input": task}
    answer = http.post(
        "/v1/tasks", params={"wait": "true"}, json=body, headers=tenant.headers(Role.AGENT)
    )
    if answer.status_code == 422:
        return {"status": "failed", "error": answer.json()["error"]}
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def refused(result: dict[str, Any], *words: str) -> str:
    assert result["status"] == "failed", result
    assert result["error"]["type"] == "InputInvalid", result["error"]
    message = str(result["error"]["message"])
    assert all(w in message for w in words), message
    return message


def merge_input(workspace: Path, **extra: Any) -> dict[str, Any]:
    return {"root": str(workspace), "functions": [], "files": [], **extra}


def test_the_agent_role_reaches_the_demo_agents_inside_the_workspace(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], agents: dict[str, str], workspace: Path
) -> None:
    tenant = tenants[0]
    listed = as_agent(http, tenant, agents, "repo.list", root=".")
    assert listed["status"] == "succeeded", listed
    assert listed["output"]["files"] == [str(workspace / "pkg" / "a.py")]
    merged = as_agent(http, tenant, agents, "report.merge", **merge_input(workspace))
    assert merged["status"] == "succeeded", merged
    assert merged["output"]["report"] == str(workspace / "reports" / "review.md")
    assert (workspace / "reports" / "review.md").read_text().startswith("# Code review of")


@pytest.mark.parametrize("where", ["outside", "dotdot", "pth"])
def test_report_merge_writes_nowhere_a_caller_names(
    http: httpx.Client,
    tenants: tuple[Tenant, Tenant],
    agents: dict[str, str],
    workspace: Path,
    where: str,
) -> None:
    target = {
        "outside": workspace.parent / "outside" / "evil.md",
        "dotdot": workspace / "reports" / ".." / ".." / "outside" / "dotdot.md",
        "pth": workspace.parent / "outside" / "site-packages" / "evil.pth",
    }[where]
    result = as_agent(
        http, tenants[0], agents, "report.merge",
        **merge_input(workspace, output=str(target)),
    )  # fmt: skip
    refused(result, "output")  # no such input: the report's place is the operator's
    assert not target.exists() and not Path(os.path.normpath(target)).exists()
    assert not (workspace.parent / "outside" / "site-packages").exists()


def test_report_merge_does_not_follow_a_symlink_planted_at_its_report(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], agents: dict[str, str], workspace: Path
) -> None:
    victim = workspace.parent / "outside" / "victim.pth"
    report = workspace / "reports" / "review.md"
    report.parent.mkdir(exist_ok=True)
    report.unlink(missing_ok=True)
    report.symlink_to(victim)
    try:
        result = as_agent(http, tenants[0], agents, "report.merge", **merge_input(workspace))
        refused(result, "symbolic link")
        assert not victim.exists()
    finally:
        report.unlink()


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/dev/zero", ("paths[1]", "outside the workspace")),
        ("/etc/passwd", ("paths[1]", "outside the workspace")),
        ("../outside/x.py", ("paths[1]", "'..'")),
        ("zero.py", ("paths[1]", "symbolic link")),
    ],
)
def test_code_analyse_reads_nothing_outside_the_workspace(
    http: httpx.Client,
    tenants: tuple[Tenant, Tenant],
    agents: dict[str, str],
    workspace: Path,
    path: str,
    words: tuple[str, ...],
) -> None:
    link = workspace / "zero.py"
    if not link.is_symlink():
        link.symlink_to("/dev/zero")  # inside the workspace, pointing out of it
    result = as_agent(http, tenants[0], agents, "code.analyse", paths=["pkg/a.py", path])
    refused(result, *words)


def test_repo_list_does_not_walk_the_filesystem(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], agents: dict[str, str], workspace: Path
) -> None:
    (workspace / "root").symlink_to("/")
    for root, words in [("/", ("outside the workspace",)), ("root", ("symbolic link",)),
                        ("..", ("'..'",))]:  # fmt: skip
        refused(as_agent(http, tenants[0], agents, "repo.list", root=root), "root", *words)
