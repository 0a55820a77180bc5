"""An execution whose steps answer with Arrow tables (the README demo's) is shown, with
each table summarised as its rows, columns and the Parquet file it is kept in, over REST,
gRPC and `dafnck executions show`; cancelling and retrying it answer too (no 500).

The review demo's agents (configs/agents/review.yaml) run configs/workflows/approval-demo.yaml
on a small workspace in tenant B, so the execution stops at its gate with its tables made.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pyarrow.parquet as pq
import pytest
from google.protobuf import json_format
from typer.testing import CliRunner

from actors.client import load_agent_specs
from actors.examples.review import FILES, FUNCTIONS, review_specs
from cluster.auth.models import Role
from cluster.settings import Settings
from serve.deployment import APP_NAME
from serve.protos import dafnck_pb2 as pb
from serve.protos import dafnck_pb2_grpc as rpc
from tests.e2e.conftest import Tenant
from tests.integration.helpers import REPO_ROOT
from workflows.loader import load_workflow_specs

pytestmark = pytest.mark.timeout(240)
CODE = {"a.py": "def f(x):\n    if x:\n        return 1\n    return 2\n", "b.py": "X = 1\n"}


@pytest.fixture(scope="module")
def tenant(tenants: tuple[Tenant, Tenant]) -> Tenant:
    return tenants[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("tables")
    for name, text in CODE.items():
        (ws / name).write_text(text)
    return ws


@pytest.fixture(scope="module")
def demo(api_url: str, tenant: Tenant, workspace: Path) -> Iterator[httpx.Client]:
    """Tenant B's operator applies the demo agents (confined to `workspace`) and the gated
    review workflow over REST; yields an operator's client."""
    specs = review_specs(
        load_agent_specs(REPO_ROOT / "configs" / "agents" / "review.yaml"),
        workspace,
        workspace / "reports" / "review.md",
    )
    ((workflow, _),) = load_workflow_specs(
        REPO_ROOT / "configs" / "workflows" / "approval-demo.yaml"
    )
    headers = tenant.headers(Role.OPERATOR)
    with httpx.Client(base_url=api_url, timeout=120, headers=headers) as http:
        for spec in specs:
            applied = http.post("/v1/agents", json=spec.model_dump(mode="json"))
            assert applied.status_code == 200, applied.text
        defined = http.post("/v1/workflows", json=workflow.model_dump(mode="json", by_alias=True))
        assert defined.status_code == 201, defined.text
        yield http


def wait_status(http: httpx.Client, eid: str, *wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = http.get(f"/v1/executions/{eid}")
        assert answer.status_code == 200, answer.text
        record = answer.json()
        if record["status"] in wanted:
            return record
        time.sleep(0.2)
    pytest.fail(f"execution {eid} is {record.get('status')}, never {wanted}")


def check_tables(record: dict[str, Any], blobs: Path) -> None:
    """Each analysed file's two tables, summarised; the Parquet file named holds them."""
    per_file = record["steps"]["analyse"]["output"]
    assert len(per_file) == len(CODE)
    for index, item in enumerate(per_file):
        assert set(item) == {"functions", "files"}
        files, functions = item["files"]["$table"], item["functions"]["$table"]
        assert (files["rows"], files["columns"]) == (1, FILES.names)
        assert functions["columns"] == FUNCTIONS.names
        for summary in (files, functions):
            stored = blobs / summary["stored_at"]
            assert summary["stored_at"].startswith(f"outputs/{record['id']}/analyse/")
            assert pq.read_table(stored).num_rows == summary["rows"]
        assert record["steps"][f"analyse[{index}]"]["output"]["files"]["$table"]["rows"] == 1
    assert sorted(f["functions"]["$table"]["rows"] for f in per_file) == [0, 1]


def test_a_demo_execution_with_arrow_outputs_reads_over_rest_grpc_and_the_cli(
    demo: httpx.Client, tenant: Tenant, e2e_settings: Settings, workspace: Path
) -> None:
    started = demo.post("/v1/executions", json={"workflow": "approval-demo"})
    assert started.status_code == 202, started.text
    eid = started.json()["id"]
    blobs = Path(e2e_settings.blobs) / tenant.name
    record = wait_status(demo, eid, "waiting_approval")
    check_tables(record, blobs)
    listed = demo.get("/v1/executions")
    assert listed.status_code == 200 and eid in {e["id"] for e in listed.json()["executions"]}

    with grpc.insecure_channel(f"127.0.0.1:{e2e_settings.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        meta = [("application", APP_NAME), ("authorization", f"Bearer {tenant.keys[Role.VIEWER]}")]
        reply = rpc.WorkflowsStub(channel).GetExecution(
            pb.GetExecutionRequest(id=eid), metadata=meta
        )
    shown = json_format.MessageToDict(reply.execution)
    assert reply.status == "waiting_approval"
    first = shown["steps"]["analyse"]["output"][0]["files"]["$table"]
    assert first == {**record["steps"]["analyse"]["output"][0]["files"]["$table"], "rows": 1.0}

    env = {
        "DAFNCK_REDIS_URL": str(e2e_settings.redis_url),
        "DAFNCK_STATE_DIR": str(e2e_settings.state_dir),
        "DAFNCK_TENANT": tenant.name,
    }
    from cluster.cli.executions import exec_app

    printed = CliRunner().invoke(exec_app, ["show", eid], env=env)
    assert printed.exit_code == 0, printed.output
    assert (
        json.loads(printed.output)["steps"]["analyse"]["output"]
        == record["steps"]["analyse"]["output"]
    )


def test_a_demo_execution_cancelled_is_retried_and_ends_with_its_report(
    demo: httpx.Client, tenant: Tenant, e2e_settings: Settings, workspace: Path
) -> None:
    eid = demo.post("/v1/executions", json={"workflow": "approval-demo"}).json()["id"]
    wait_status(demo, eid, "waiting_approval")
    cancelled = demo.post(f"/v1/executions/{eid}/cancel", json={"reason": "not yet"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"

    retried = demo.post(f"/v1/executions/{eid}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["steps"]["analyse"]["output"][0]["files"]["$table"]["rows"] == 1
    wait_status(demo, eid, "waiting_approval")
    approved = demo.post(f"/v1/executions/{eid}/steps/report/approve", json={"reason": "ok"})
    assert approved.status_code == 200, approved.text
    done = wait_status(demo, eid, "succeeded", "failed")
    assert done["status"] == "succeeded", done["error"]
    check_tables(done, Path(e2e_settings.blobs) / tenant.name)
    assert done["outputs"] == {"report": str(workspace / "reports" / "review.md"), "files": 2}
    assert (workspace / "reports" / "review.md").read_text().startswith("# Code review of")
