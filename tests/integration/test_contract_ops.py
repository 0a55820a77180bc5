"""The supervisor's operations through the client's blocking facade, the gateway and the
supervisor actor on a real cluster: a signal reaches the step waiting for it, a cancelled
step's work stops on the replica (its marker never lands) while the rest goes on, a
skipped step counts as skipped, and a bad request is refused with our own error."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.client import Client
from actors.contract import ExecutionRef
from actors.models import AgentSpec
from cluster.errors import Conflict, NotFound
from tests.integration.helpers import wait_until
from workflows.execution import ExecutionStatus, StepStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(180)


def test_a_signal_becomes_the_waiting_steps_output(client: Client) -> None:
    client.workflows.define(WorkflowSpec.model_validate({
        "name": "gated", "steps": [{"id": "go", "wait": {"signal": "go"}}],
        "outputs": {"said": "${{ steps.go.output.said }}"},
    }))  # fmt: skip
    started = client.workflows.run("gated", wait=False)
    client.workflows.signal(started.id, "go", {"said": "yes"})
    done = client.workflows.wait(started.id, timeout_s=60)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    assert done.outputs == {"said": "yes"}


def test_a_cancelled_step_stops_on_its_replica_and_the_execution_goes_on(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(AgentSpec(
        name="marker", capabilities=["test.marker"],
        entrypoint="tests.fixtures.cancellable:write_later", replicas={"min": 1, "max": 1},
    ))  # fmt: skip
    client.workflows.define(WorkflowSpec.model_validate({
        "name": "two-branches",
        "steps": [
            {"id": "slow", "uses": "test.marker", "with": {
                "started": str(tmp_path / "started"), "marker": str(tmp_path / "marker"),
                "seconds": 30}},
            {"id": "after", "uses": "test.marker", "needs": ["slow"], "trigger_rule": "all_done",
             "with": {"started": str(tmp_path / "s2"), "marker": str(tmp_path / "m2"),
                      "seconds": 0}},
        ],
    }))  # fmt: skip
    started = client.workflows.run("two-branches", wait=False)
    wait_until((tmp_path / "started").exists, 60, "the slow step to start on its replica")
    client.workflows.cancel_step(started.id, "slow", by="ann", reason="not needed")
    done = client.workflows.wait(started.id, timeout_s=60)
    assert done.steps["slow"].status == StepStatus.CANCELLED
    assert done.steps["after"].status == StepStatus.SUCCEEDED  # all_done: it ran after
    assert (tmp_path / "m2").exists()
    assert not (tmp_path / "marker").exists()  # the cancel reached the replica's task
    with pytest.raises(Conflict):  # the execution has ended: nothing left to skip
        client.workflows.skip_step(started.id, "after")


def test_an_unknown_execution_is_our_own_error(client: Client) -> None:
    with pytest.raises(NotFound):
        client.api.get_execution_status(ExecutionRef(execution_id="no-such-execution"))
