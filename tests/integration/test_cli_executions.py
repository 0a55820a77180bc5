"""`dafnck executions pause|resume|cancel|retry|approve|reject` on a real supervisor: each
command changes the execution (as REST and gRPC do), prints its new status, and records
who decided and why; a call that does not apply is refused with the supervisor's error."""

from __future__ import annotations

import getpass
from collections.abc import Callable

import pytest
from typer.testing import CliRunner, Result

from actors.client import Client
from actors.models import AgentSpec
from cluster.cli.executions import exec_app
from cluster.errors import Conflict
from tests.integration.helpers import wait_until
from workflows.execution import ExecutionStatus, StepStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(240)

GATED = WorkflowSpec.model_validate(
    {
        "name": "cli-gated",
        "steps": [
            {"id": "first", "uses": "test.echo", "with": {"text": "a"}},
            {"id": "go", "uses": "test.echo", "with": {"text": "b"}, "needs": ["first"],
             "approval": {"prompt": "go?"}},
        ],
    }
)  # fmt: skip
Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def cli(shared_client: Client) -> Cli:
    """`dafnck executions ...` in the module's tenant, with the echo agent and GATED defined
    once: each test runs and decides executions of its own, so they share one supervisor."""
    echo = AgentSpec(
        name="echo", capabilities=["test.echo"], entrypoint="tests.fixtures.agents:echo"
    )
    shared_client.agents.apply(echo)
    shared_client.workflows.define(GATED)
    settings = shared_client.settings
    env = {
        "DAFNCK_REDIS_URL": str(settings.redis_url),
        "DAFNCK_STATE_DIR": str(settings.state_dir),
        "DAFNCK_TENANT": settings.tenant,
    }
    return lambda *args: CliRunner().invoke(exec_app, list(args), env=env)


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's shared tenant (not a fresh one per test)."""
    return shared_client


def _at_the_gate(client: Client, execution_id: str | None = None) -> str:
    """An execution of GATED (a new one unless given) once it waits at its gate."""
    eid = execution_id or client.workflows.run(GATED.name, wait=False).id
    wait_until(
        lambda: client.workflows.status(eid).status == ExecutionStatus.WAITING_APPROVAL,
        60,
        f"{eid} at its gate",
    )
    return eid


def _status(client: Client, eid: str) -> ExecutionStatus:
    return client.workflows.status(eid).status


def test_pause_resume_cancel_and_retry(client: Client, cli: Cli) -> None:
    eid = _at_the_gate(client)
    paused = cli("pause", eid)
    assert (paused.exit_code, paused.output) == (0, f"execution {eid}: paused\n")
    assert _status(client, eid) == ExecutionStatus.PAUSED
    again = cli("pause", eid)  # `dafnck` prints a platform error as one line and exits 1
    assert isinstance(again.exception, Conflict), again.output
    assert "paused, not running or waiting_approval" in again.exception.message

    assert cli("resume", eid).output == f"execution {eid}: running\n"
    assert _status(client, eid) != ExecutionStatus.PAUSED

    cancelled = cli("cancel", eid, "--reason", "not today")
    assert (cancelled.exit_code, cancelled.output) == (0, f"execution {eid}: cancelled\n")
    ended = client.workflows.status(eid)
    assert ended.status == ExecutionStatus.CANCELLED
    assert ended.error is not None and ended.error.message == "not today"

    retried = cli("retry", eid)
    assert retried.exit_code == 0, retried.output
    assert retried.output in (f"execution {eid}: running\n", f"execution {eid}: waiting_approval\n")
    _at_the_gate(client, eid)  # run again up to the gate: `go` had not succeeded


def test_approve_and_reject_record_who_decided_and_why(client: Client, cli: Cli) -> None:
    approved, rejected = _at_the_gate(client), _at_the_gate(client)
    assert cli("approve", approved, "go", "--reason", "fine").exit_code == 0
    assert cli("reject", rejected, "go", "--reason", "no").exit_code == 0
    wait_until(lambda: _status(client, approved) == ExecutionStatus.SUCCEEDED, 60, "approved")
    wait_until(lambda: _status(client, rejected) == ExecutionStatus.FAILED, 60, "rejected")

    by = f"cli:{getpass.getuser()}"
    go = client.workflows.status(approved).steps["go"]
    assert go.status == StepStatus.SUCCEEDED and go.approval is not None
    assert (go.approval.decision, go.approval.by, go.approval.reason) == ("approved", by, "fine")
    go = client.workflows.status(rejected).steps["go"]
    assert go.status == StepStatus.FAILED and go.approval is not None
    assert (go.approval.decision, go.approval.by, go.approval.reason) == ("rejected", by, "no")

    late = cli("approve", rejected, "go")
    assert isinstance(late.exception, Conflict), late.output
