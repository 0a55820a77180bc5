"""`dafnck executions signal | cancel-step | skip-step` on a real supervisor: a signal's
payload becomes the waiting step's output, a cancelled or skipped step ends so, with who
and why, and bad JSON is refused naming the option and where it went wrong."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from actors.client import Client
from cluster.cli.execution_controls import exec_app
from cluster.errors import Conflict, InputInvalid
from cluster.settings import Settings
from workflows.execution import ExecutionStatus, StepStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(180)

WAITS = WorkflowSpec.model_validate({
    "name": "cli-waits",
    "steps": [{"id": "go", "wait": {"signal": "go"}}, {"id": "more", "wait": {"signal": "more"}},
              {"id": "last", "wait": {"signal": "last"}}],
    "outputs": {"said": "${{ steps.go.output.said }}"},
})  # fmt: skip
Cli = Callable[..., Result]


@pytest.fixture
def cli(client: Client, tenant_settings: Settings) -> Cli:
    client.workflows.define(WAITS)
    env = {
        "DAFNCK_REDIS_URL": str(tenant_settings.redis_url),
        "DAFNCK_STATE_DIR": str(tenant_settings.state_dir),
        "DAFNCK_TENANT": tenant_settings.tenant,
    }
    return lambda *args: CliRunner().invoke(exec_app, list(args), env=env)


def test_signal_cancel_step_and_skip_step(client: Client, cli: Cli, tmp_path: Path) -> None:
    eid = client.workflows.run(WAITS.name, wait=False).id
    bad = cli("signal", eid, "go", "--payload", '{"said": yes}')
    assert isinstance(bad.exception, InputInvalid), bad.output
    assert bad.exception.args[0] == "--payload" and "line 1 column 10" in bad.exception.message
    payload = tmp_path / "payload.json"
    payload.write_text('{"said": "from a file"}')
    sent = cli("signal", eid, "go", "--payload-file", str(payload))
    assert sent.exit_code == 0, sent.output
    assert "signal go sent" in sent.output

    cancelled = cli("cancel-step", eid, "more", "--reason", "not needed")
    assert cancelled.exit_code == 0, cancelled.output
    assert "step more: cancelled" in cancelled.output
    twice = cli("cancel-step", eid, "more")
    assert isinstance(twice.exception, Conflict), twice.output
    skipped = cli("skip-step", eid, "last")
    assert skipped.exit_code == 0, skipped.output

    done = client.workflows.wait(eid, timeout_s=60)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    assert done.outputs == {"said": "from a file"}
    assert done.steps["more"].status == StepStatus.CANCELLED
    assert done.steps["last"].status == StepStatus.SKIPPED
    events = client.workflows.executions.events(eid, "0-0", count=100)
    reasons = [e.data.get("reason") for _, e in events if e.type == "step.cancelled"]
    assert reasons == [f"cancelled by cli:{getpass.getuser()}: not needed"]
