"""Workflows on a real Ray and Valkey: the supervisor runs them, agents do the steps."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.client import Client, load_agent_specs
from actors.examples.review import review_specs
from actors.models import AgentSpec
from actors.names import supervisor_name
from cluster.errors import Conflict, InputInvalid, SpecInvalid
from cluster.settings import RAY_NAMESPACE
from tests.integration.helpers import REPO_ROOT, wait_until
from workflows.execution import ExecutionStatus, StepStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(240)


def step_agent(replicas: int = 2, max_concurrency: int = 64) -> AgentSpec:
    return AgentSpec(
        name="stepper",
        capabilities=["test.step"],
        entrypoint="tests.fixtures.agents:step",
        replicas={"min": replicas, "max": 8},
        max_concurrency=max_concurrency,
    )


def chain(name: str = "chain", length: int = 5, seconds: float = 0.0) -> WorkflowSpec:
    steps: list[dict[str, Any]] = [
        {"id": "s0", "uses": "test.step", "with": {"value": 0, "seconds": seconds}}
    ]
    for i in range(1, length):
        steps.append({"id": f"s{i}", "uses": "test.step",
                      "with": {"value": f"${{{{ steps.s{i - 1}.output }}}}", "seconds": seconds}})  # fmt: skip
    return WorkflowSpec.model_validate(
        {
            "name": name,
            "steps": steps,
            "outputs": {"last": f"${{{{ steps.s{length - 1}.output }}}}"},
        }
    )


def succeeded_per_step(client: Client, execution_id: str) -> Counter[str]:
    return Counter(
        e.step
        for _, e in client.workflows.events(execution_id)
        if e.type == "step.succeeded" and e.step
    )


@pytest.fixture(scope="module")
def stepper(shared_client: Client) -> Client:
    """The module's one tenant with the step agent applied: its tests name their workflows
    apart, so they share one supervisor and pool instead of starting one each."""
    shared_client.agents.apply(step_agent(replicas=2))
    return shared_client


def test_review_workflow_end_to_end(shared_client: Client, tmp_path: Path) -> None:
    client = shared_client
    report = tmp_path / "review.md"
    specs = load_agent_specs(REPO_ROOT / "configs/agents/review.yaml")
    client.agents.apply(review_specs(specs, REPO_ROOT / "cluster", report))
    (definition,) = client.workflows.define(REPO_ROOT / "configs/workflows/review.yaml")
    done = client.workflows.run(definition["name"], {"root": "."}, timeout_s=120)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    files = sorted(p for p in (REPO_ROOT / "cluster").rglob("*.py") if "__pycache__" not in p.parts)
    assert done.outputs is not None and done.outputs["summary"]["files"] == len(files)
    assert report.read_text().startswith("# Code review of")
    assert len(done.steps["analyse"].output or []) == len(files)


def test_a_workflow_with_unknown_capabilities_is_refused_with_every_problem(
    stepper: Client,
) -> None:
    bad = WorkflowSpec.model_validate({"name": "bad", "steps": [
        {"id": "a", "uses": "test.stepp"},
        {"id": "b", "uses": "test.step", "needs": ["zz"]},
    ]})  # fmt: skip
    with pytest.raises(SpecInvalid) as caught:
        stepper.workflows.define(bad)
    text = str(caught.value)
    assert "test.stepp" in text and "zz" in text


def test_inputs_of_the_wrong_type_are_refused_with_the_field(stepper: Client) -> None:
    stepper.workflows.define(WorkflowSpec.model_validate({
        "name": "typed", "inputs": {"n": {"type": "integer"}},
        "steps": [{"id": "a", "uses": "test.step", "with": {"value": "${{ inputs.n }}"}}],
    }))  # fmt: skip
    with pytest.raises(InputInvalid, match="'n'"):
        stepper.workflows.run("typed", {"n": "seven"})


def test_fan_out_of_200_items(stepper: Client) -> None:
    stepper.workflows.define(WorkflowSpec.model_validate({
        "name": "wide", "outputs": {"all": "${{ steps.each.output }}"},
        "steps": [{"id": "each", "uses": "test.step", "with": {"value": "${{ item }}"},
                   "for_each": {"items": "inputs.n", "max_parallel": 50}}],
        "inputs": {"n": {"type": "array"}},
    }))  # fmt: skip
    done = stepper.workflows.run("wide", {"n": list(range(200))}, timeout_s=120)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.outputs == {"all": [i + 1 for i in range(200)]}


def test_sub_workflow_runs_as_a_step(stepper: Client) -> None:
    stepper.workflows.define(chain("inner", length=3))
    stepper.workflows.define(WorkflowSpec.model_validate({
        "name": "outer", "outputs": {"inner": "${{ steps.sub.output.last }}"},
        "steps": [{"id": "sub", "uses": "workflow:inner"}],
    }))  # fmt: skip
    done = stepper.workflows.run("outer", timeout_s=60)
    assert done.status == ExecutionStatus.SUCCEEDED and done.outputs == {"inner": 3}


def test_a_running_execution_keeps_its_version_when_the_definition_changes(stepper: Client) -> None:
    assert stepper.workflows.define(chain("moving", length=3, seconds=0.5))[0]["version"] == 1
    first = stepper.workflows.run("moving", wait=False)
    assert stepper.workflows.define(chain("moving", length=2))[0]["version"] == 2
    second = stepper.workflows.run("moving", timeout_s=60)
    done = stepper.workflows.wait(first.id, 60)
    assert (done.version, done.outputs) == (1, {"last": 3})
    assert (second.version, second.outputs) == (2, {"last": 2})


def test_pause_resume_cancel_and_approval_through_the_supervisor(stepper: Client) -> None:
    stepper.workflows.define(chain("pausable", length=3, seconds=0.5))
    execution = stepper.workflows.run("pausable", wait=False)
    time.sleep(0.2)
    assert stepper.workflows.pause(execution.id).status == ExecutionStatus.PAUSED
    with pytest.raises(Conflict):
        stepper.workflows.pause(execution.id)
    wait_until(
        lambda: stepper.workflows.status(execution.id).steps["s0"].status == StepStatus.SUCCEEDED,
        10,
        "s0 to finish",
    )
    time.sleep(0.3)
    assert stepper.workflows.status(execution.id).steps["s1"].status == StepStatus.PENDING
    stepper.workflows.resume(execution.id)
    assert stepper.workflows.wait(execution.id, 30).status == ExecutionStatus.SUCCEEDED

    cancelled = stepper.workflows.run("pausable", wait=False)
    time.sleep(0.2)
    stepper.workflows.cancel(cancelled.id, by="test", reason="enough")
    done = stepper.workflows.wait(cancelled.id, 30)
    assert done.status == ExecutionStatus.CANCELLED
    assert done.steps["s0"].status == StepStatus.CANCELLED

    stepper.workflows.define(WorkflowSpec.model_validate({"name": "gated", "steps": [
        {"id": "go", "uses": "test.step", "approval": {"prompt": "go?"}}]}))  # fmt: skip
    gated = stepper.workflows.run("gated", wait=False)
    wait_until(
        lambda: stepper.workflows.status(gated.id).status == ExecutionStatus.WAITING_APPROVAL,
        10,
        "the gate",
    )
    stepper.workflows.approve(gated.id, "go", by="test", reason="fine")
    done = stepper.workflows.wait(gated.id, 30)
    assert done.status == ExecutionStatus.SUCCEEDED and done.steps["go"].approval.by == "test"  # type: ignore[union-attr]


@pytest.mark.chaos
def test_supervisor_killed_three_times_during_twenty_workflows(client: Client) -> None:
    client.agents.apply(step_agent(replicas=2))
    client.workflows.define(chain("durable", length=5, seconds=0.3))
    executions = [client.workflows.run("durable", wait=False) for _ in range(20)]
    supervisor = ray.get_actor(supervisor_name(client.settings.tenant), namespace=RAY_NAMESPACE)
    recoveries = []
    for _ in range(3):
        time.sleep(0.6)
        killed_at = time.time()
        ray.kill(supervisor, no_restart=False)
        recoveries.append(_time_to_first_dispatch(client, [e.id for e in executions], killed_at))
    for execution in executions:
        done = client.workflows.wait(execution.id, 120)
        assert done.status == ExecutionStatus.SUCCEEDED, (done.id, done.error)
        assert done.outputs == {"last": 5}
        assert set(succeeded_per_step(client, execution.id).values()) == {1}, (
            "a step was committed twice"
        )
    print(f"recovery after each supervisor kill (s): {[round(r, 2) for r in recoveries]}")
    assert all(r < 60 for r in recoveries)


def _time_to_first_dispatch(client: Client, ids: list[str], killed_at: float) -> float:
    """Seconds from the kill to the first step started again by the restarted supervisor."""

    def first() -> float | None:
        for execution_id in ids:
            events = [e for _, e in client.workflows.events(execution_id)]
            recovered = [
                i
                for i, e in enumerate(events)
                if e.type == "execution.recovered" and e.at >= killed_at
            ]
            if recovered:
                after = [e.at for e in events[recovered[0] :] if e.type == "step.started"]
                if after:
                    return after[0] - killed_at
        return None

    return wait_until(first, 60, "a step dispatched after the supervisor restarted", interval_s=0.1)
