"""A python skill's `SkillContext` on a real cluster: a workflow step's skill sees its
execution, step and idempotency key (the same key again on its re-dispatch after a
supervisor kill), and a sync skill polling `cancelled` stops when its task is cancelled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from actors.client import Client
from actors.models import AgentSpec
from actors.names import supervisor_name
from cluster.errors import TaskCancelled
from cluster.settings import RAY_NAMESPACE
from tests.integration.helpers import wait_until
from workflows.execution import ExecutionStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(240)


def context_agent(*capabilities: str, entrypoint: str, concurrency: int = 2) -> AgentSpec:
    return AgentSpec(
        name="ctx",
        capabilities=list(capabilities),
        entrypoint=f"tests.fixtures.context_skills:{entrypoint}",
        replicas={"min": 1, "max": 1},
        max_concurrency=concurrency,
    )


def test_a_workflow_steps_skill_sees_its_execution_step_and_key(client: Client) -> None:
    client.agents.apply(context_agent("test.ids", entrypoint="ids"))
    client.workflows.define(WorkflowSpec.model_validate({
        "name": "ids", "steps": [{"id": "look", "uses": "test.ids", "with": {"note": "n"}}],
    }))  # fmt: skip
    done = client.workflows.run("ids", {}, timeout_s=60)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    seen = done.steps["look"].output
    assert seen["execution_id"] == done.id
    assert seen["step_id"] == "look"
    assert seen["idempotency_key"] == f"{done.id}/look"
    assert seen["workflow_id"] == done.workflow
    assert seen["tenant"] == client.settings.tenant
    assert seen["note"] == "n" and seen["cancelled"] is False


def test_a_sync_skill_polling_the_flag_stops_when_its_task_is_cancelled(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(context_agent("test.poll", entrypoint="poll_then_write"))
    started, marker, stopped = tmp_path / "started", tmp_path / "marker", tmp_path / "stopped"
    call = client.tasks.submit("test.poll", {
        "started": str(started), "marker": str(marker), "stopped": str(stopped), "seconds": 60,
    })  # fmt: skip
    wait_until(started.exists, 60, "the skill to start")
    assert client.tasks.cancel(call)
    with pytest.raises(TaskCancelled):
        client.tasks.result(call)
    # the thread saw the flag and returned, well before its 60 s would have run out
    wait_until(stopped.exists, 30, "the skill to see its cancellation")
    assert stopped.read_text() == call.task.id
    assert not marker.exists()


@pytest.mark.chaos
def test_a_step_redispatched_after_a_supervisor_kill_keeps_its_key(
    client: Client, tmp_path: Path
) -> None:
    client.agents.apply(context_agent("test.charge", entrypoint="charge"))
    ledger, started = tmp_path / "ledger", tmp_path / "started"
    client.workflows.define(WorkflowSpec.model_validate({"name": "pay", "steps": [
        {"id": "charge", "uses": "test.charge", "with": {
            "ledger": str(ledger), "amount": 5, "started": str(started), "seconds": 5}},
    ]}))  # fmt: skip
    execution = client.workflows.run("pay", {}, wait=False)
    wait_until(started.exists, 60, "the step to start on its replica")
    killed_at = time.time()
    supervisor = ray.get_actor(supervisor_name(client.settings.tenant), namespace=RAY_NAMESPACE)
    ray.kill(supervisor, no_restart=False)
    wait_until(
        lambda: any(
            e.type == "execution.recovered" and e.at >= killed_at
            for _, e in client.workflows.events(execution.id)
        ),
        90,
        "the restarted supervisor to resume the execution",
    )
    done = client.workflows.wait(execution.id, 120)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    keys = started.read_text().splitlines()
    assert len(keys) >= 2, "the step was not dispatched again"
    assert set(keys) == {f"{execution.id}/charge"}
    assert done.steps["charge"].output["key"] == f"{execution.id}/charge"
    charged = ledger.read_text().splitlines() if ledger.exists() else []
    assert len(charged) <= 1  # never charged twice
