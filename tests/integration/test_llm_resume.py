"""A workflow mixing an llm agent and a python agent, its supervisor and llm replica killed
while a model call is in flight: it resumes, and the fake provider's request log shows that
no completed model call was paid twice and the tool's file that no tool call ran twice."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.client import Client
from actors.llm_journal import execution_tool_calls
from actors.models import AgentSpec
from actors.names import supervisor_name
from cluster.llm.usage import UsageLedger, WorkflowBudget
from cluster.settings import RAY_NAMESPACE
from tests.fixtures.fake_llm import FakeLLM
from tests.integration.helpers import echo_spec, wait_until
from workflows.execution import ExecutionStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(150)


def writer(url: str, key_file: Path) -> AgentSpec:
    return AgentSpec.model_validate({
        "name": "writer",
        "kind": "llm",
        "capabilities": ["text.write"],
        "llm": {
            "provider": "openai", "model": "gpt-4o-mini", "base_url": url,
            "api_key_file": str(key_file), "max_retries": 0, "timeout_s": 60,
            "tools": [{"skill": "tests.fixtures.llm_notes:record_note"}],
        },
    })  # fmt: skip


MIXED = WorkflowSpec.model_validate({
    "name": "mixed",
    "steps": [
        {"id": "draft", "uses": "text.write", "with": {"prompt": "Write, and note it."}},
        {"id": "shout", "uses": "test.echo", "with": {"text": "${{ steps.draft.output.text }}"}},
    ],
    "outputs": {"text": "${{ steps.shout.output.text }}"},
})  # fmt: skip


def kill_mid_call(client: Client) -> None:
    """The supervisor (Ray restarts it) and the llm replica (the supervisor replaces it)."""
    tenant = client.settings.tenant
    ray.kill(ray.get_actor(supervisor_name(tenant), namespace=RAY_NAMESPACE), no_restart=False)
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(f"{tenant}/writer"):
            ray.kill(ray.get_actor(entry["name"], namespace=RAY_NAMESPACE), no_restart=True)


def finished(client: Client, execution_id: str) -> Any:
    try:
        execution = client.workflows.status(execution_id)
    except Exception:  # the supervisor is restarting
        return None
    return execution if execution.status.terminal else None


def test_killed_mid_workflow_it_resumes_without_paying_twice(
    client: Client, tmp_path: Path
) -> None:
    key_file, notes = tmp_path / "openai.key", tmp_path / "notes.txt"
    key_file.write_text("sk-resume-0123456789abcdef")
    with FakeLLM() as llm:
        llm.reply(tool_calls=[("call_1", "record_note", {"path": str(notes), "note": "one"})],
                  tokens=(100, 20))  # fmt: skip
        llm.slow(10, "never delivered")  # turn 1, in flight when the kill comes
        llm.reply("all done", tokens=(150, 30))  # turn 1 again, after the resume
        client.agents.apply([writer(llm.openai_url, key_file), echo_spec()])
        client.workflows.define(MIXED)
        execution = client.workflows.run("mixed", {}, wait=False)
        wait_until(lambda: len(llm.requests) >= 2, 60, "the second model turn in flight")
        time.sleep(0.3)  # the turn's lease is taken and refreshed
        kill_mid_call(client)
        done = wait_until(lambda: finished(client, execution.id), 90, "the execution to end")

        assert done.status == ExecutionStatus.SUCCEEDED, done.error
        events = [event.type for _, event in client.workflows.events(execution.id)]
        assert "execution.recovered" in events  # the restarted supervisor took it over
        assert done.outputs == {"text": "all done"}
        assert notes.read_text().splitlines() == ["one"]  # the tool ran once
        asked = [json.dumps(r["body"]["messages"], sort_keys=True) for r in llm.requests]
        assert len(asked) == 3, asked
        assert asked.count(asked[0]) == 1  # turn 0 completed, and was paid once
        assert asked[1] == asked[2]  # turn 1 never completed, so it was asked again
    usage = UsageLedger(client.store).execution_report(execution.id)
    assert (usage["calls"], usage["input_tokens"], usage["output_tokens"]) == (2, 250, 50)
    journal = execution_tool_calls(client.store, execution.id)
    assert journal["draft"]["call_1"]["status"] == "succeeded"
    assert done.steps["draft"].output["usage"]["replayed_calls"] == 1


def test_a_step_past_the_workflow_budget_waits_for_approval_then_goes_on(
    client: Client, tmp_path: Path
) -> None:
    key_file, notes = tmp_path / "openai.key", tmp_path / "notes.txt"
    key_file.write_text("sk-budget-0123456789abcdef")
    flow = MIXED.model_copy(
        update={"name": "budgeted", "budget": WorkflowBudget(max_tokens=100, on_exceed="approval")}
    )
    with FakeLLM() as llm:
        llm.reply(tool_calls=[("call_1", "record_note", {"path": str(notes), "note": "one"})],
                  tokens=(100, 20))  # fmt: skip  # crosses the budget: the next turn is refused
        llm.reply("approved text", tokens=(150, 30))
        client.agents.apply([writer(llm.openai_url, key_file), echo_spec()])
        client.workflows.define(flow)
        execution = client.workflows.run("budgeted", {}, wait=False)

        def at_gate() -> Any:
            found = client.workflows.status(execution.id)
            return found if found.status == ExecutionStatus.WAITING_APPROVAL else None

        gated = wait_until(at_gate, 60, "the step held at its budget gate")
        assert gated.steps["draft"].status == "waiting_approval"
        assert len(llm.requests) == 1
        wait_until(lambda: _approve(client, execution.id), 30, "the approval to be taken")
        done = wait_until(lambda: finished(client, execution.id), 60, "the execution to end")
        assert done.status == ExecutionStatus.SUCCEEDED, done.error
        assert done.outputs == {"text": "approved text"}
        assert len(llm.requests) == 2  # the first turn replayed after the approval
        assert notes.read_text().splitlines() == ["one"]
    usage = UsageLedger(client.store).execution_report(execution.id)
    assert (usage["calls"], usage["input_tokens"] + usage["output_tokens"]) == (2, 300)


def _approve(client: Client, execution_id: str) -> bool:
    try:
        client.workflows.approve(execution_id, "draft", by="ann", reason="worth it")
    except Exception:  # the gate is not registered yet
        return False
    return True
