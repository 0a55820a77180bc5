"""Every contract and every error survives the trips Ray and Redis put it through:
`pickle` (Ray between processes) and, for contracts, `model_dump_json`/`model_validate_json`
(Redis and the API)."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest
from pydantic import BaseModel

import actors.models as models
import cluster.errors as errors
from actors.models import (
    AgentRecord,
    AgentSpec,
    AgentStatus,
    Autoscaling,
    BudgetConfig,
    DiscoveryCriteria,
    ErrorInfo,
    LLMConfig,
    MCPServer,
    MemoryConfig,
    Messaging,
    Replicas,
    Resources,
    RetryPolicy,
    SkillInfo,
    Task,
    TaskContext,
    TaskResult,
    ToolRef,
)

SPEC = AgentSpec(
    name="reviewer",
    version="2.1.0",
    description="reviews code",
    capabilities=["code.review", "code.lint"],
    entrypoint="pkg.mod:Reviewer",
    config={"strict": True, "depth": 3},
    resources=Resources(num_cpus=0.5, memory_mb=256, custom={"gpu-lite": 1.0}),
    replicas=Replicas(min=2, max=5),
    max_concurrency=4,
    max_queued=7,
    timeout_s=12.5,
    retry=RetryPolicy(max_attempts=5, backoff_s=0.2),
    tags=["blue", "team-a"],
)
SKILL = SkillInfo(
    capability="code.review",
    method="review",
    input_schema={
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
    description="review one file",
)
CONTEXT = TaskContext(
    tenant="acme",
    traceparent="00-abc-def-01",
    workflow_id="w",
    execution_id="e",
    step_id="s",
    attempt=2,
)

LLM = LLMConfig(
    provider="openai",
    model="gpt-4o-mini",
    base_url="http://127.0.0.1:9/v1",
    api_key_env="OPENAI_API_KEY",
    system_prompt="be brief",
    temperature=0.2,
    output_schema={"type": "object", "required": ["answer"]},
    tools=[
        ToolRef(skill="pkg.tools:lookup", idempotent=True),
        ToolRef(mcp=MCPServer(command=["python", "-m", "srv"], include=["add"])),
        ToolRef(agent="code.review", name="review", timeout_s=30),
    ],
    memory=MemoryConfig(max_messages=20, max_tokens=4000, ttl_s=3600),
    budget=BudgetConfig(max_tokens=10_000, max_cost_usd=0.5, on_exceeded="pause"),
)

CONTRACTS: dict[type[BaseModel], BaseModel] = {
    MCPServer: MCPServer(url="http://127.0.0.1:9/mcp"),
    ToolRef: LLM.tools[2],
    MemoryConfig: LLM.memory,  # type: ignore[dict-item]
    BudgetConfig: LLM.budget,  # type: ignore[dict-item]
    LLMConfig: LLM,
    Resources: SPEC.resources,
    Replicas: SPEC.replicas,
    Autoscaling: Autoscaling(
        target_inflight_per_replica=3, upscale_delay_s=1, downscale_delay_s=5, idle_to_zero_s=60
    ),
    RetryPolicy: SPEC.retry,
    Messaging: Messaging(topics=["news"], claim_idle_s=2.5, max_deliveries=3),
    AgentSpec: SPEC,
    SkillInfo: SKILL,
    AgentRecord: AgentRecord(
        spec=SPEC,
        status=AgentStatus.DRAINING,
        desired_replicas=3,
        skills={"code.review": SKILL},
        registered_at=1.5,
        updated_at=2.5,
    ),
    DiscoveryCriteria: DiscoveryCriteria(
        capability="code.review",
        name="reviewer",
        version=">=2,<3",
        status=AgentStatus.ACTIVE,
        tags=["blue"],
    ),
    TaskContext: CONTEXT,
    Task: Task(
        capability="code.review",
        agent="reviewer@>=2",
        input={"path": "a.py", "n": [1, 2]},
        priority=5,
        timeout_s=3,
        idempotency_key="k1",
        context=CONTEXT,
    ),
    ErrorInfo: ErrorInfo(type="QueueFull", message="full", retryable=True),
    TaskResult: TaskResult(
        task_id="t1",
        status="failed",
        output={"partial": [1]},
        error=ErrorInfo(type="ValueError", message="bad", retryable=False),
        agent="reviewer@2.1.0",
        replica="acme/reviewer@2.1.0/1",
        attempts=2,
        started_at=10.0,
        finished_at=10.25,
    ),
}

ERRORS: dict[type[errors.DafnckError], errors.DafnckError] = {
    errors.DafnckError: errors.DafnckError("something went wrong"),
    errors.ConfigError: errors.ConfigError("dafnck.yaml: invalid settings: tenant: bad"),
    errors.StoreUnavailable: errors.StoreUnavailable(
        "Redis at redis://127.0.0.1:1/0 is unreachable"
    ),
    errors.StoreFull: errors.StoreFull("the store is full (Redis is at its maxmemory)"),
    errors.NotFound: errors.NotFound("no such execution 'x'"),
    errors.AgentNotFound: errors.AgentNotFound("code.reveiw", ["code.review", "data.load"]),
    errors.Conflict: errors.Conflict("execution 'x' already finished"),
    errors.SpecInvalid: errors.SpecInvalid(
        "agent 'a@1.0.0'", ["name: bad", "replicas.max: too big"]
    ),
    errors.InputInvalid: errors.InputInvalid("input of 'code.review'", ["path: required"]),
    errors.QueueFull: errors.QueueFull("agent 'a@1.0.0' has 3 tasks in flight"),
    errors.ReplicaDied: errors.ReplicaDied("replica r died"),
    errors.TaskTimeout: errors.TaskTimeout("task t timed out after 3s"),
    errors.TaskCancelled: errors.TaskCancelled("task t was cancelled before it answered"),
    errors.TaskFailed: errors.TaskFailed("boom", "KeyError", True),
    errors.ClusterUnavailable: errors.ClusterUnavailable("cannot join the Ray cluster"),
    errors.Unauthorized: errors.Unauthorized("the token expired"),
    errors.Forbidden: errors.Forbidden.for_role("viewer", "agents:write"),
    errors.RateLimited: errors.RateLimited("100 requests per second for key k1", 0.25),
    errors.QuotaExceeded: errors.QuotaExceeded("streams_per_key", 16, "tenant 'a' has 16 open"),
    errors.StorageQuotaExceeded: errors.StorageQuotaExceeded("stored_bytes", 1024),
    errors.BudgetExceeded: errors.BudgetExceeded("task t used 1200 of its 1000 tokens"),
    errors.BudgetNeedsApproval: errors.BudgetNeedsApproval("workflow budget $0.50 reached"),
    errors.ToolMayHaveRun: errors.ToolMayHaveRun("tool 'send' (call c1) may have run"),
    errors.ProviderError: errors.ProviderError("openai gpt-4o: 429 rate limited after 3 tries"),
    errors.OutputInvalid: errors.OutputInvalid("reply did not match the schema: 'answer' missing"),
    errors.OutboundRefused: errors.OutboundRefused(
        "webhook.url: 169.254.169.254 is a cloud metadata address"
    ),
}


def test_every_contract_and_error_has_a_sample() -> None:
    """A new contract or error class must be added to the round trip below."""
    contracts = {
        obj
        for module in (models, errors)
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseModel)
        and obj.__module__ == module.__name__
        and obj not in (models.Contract, models.Record)
    }
    errors_defined = {
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.DafnckError) and obj.__module__ == errors.__name__
    }
    assert contracts == set(CONTRACTS)
    assert errors_defined == set(ERRORS)


@pytest.mark.parametrize(
    "sample",
    [*CONTRACTS.values(), *ERRORS.values()],
    ids=[*(c.__name__ for c in CONTRACTS), *(e.__name__ for e in ERRORS)],
)
def test_round_trip(sample: Any) -> None:
    copy = pickle.loads(pickle.dumps(sample))
    assert type(copy) is type(sample)
    if isinstance(sample, BaseModel):
        assert copy == sample
        again = type(sample).model_validate_json(sample.model_dump_json())
        assert again == sample
    else:
        assert copy.message == sample.message
        assert str(copy) == str(sample)
        assert copy.retryable == sample.retryable
        assert copy.to_dict() == sample.to_dict()
        assert copy.args == sample.args


@pytest.mark.parametrize("sample", ERRORS.values(), ids=[e.__name__ for e in ERRORS])
def test_every_error_is_one_error_info(sample: errors.DafnckError) -> None:
    """API bodies, task results and step records all carry `info()`; `to_dict()` is its dump,
    details included under their own names, and it survives Redis (JSON) and Ray (pickle)."""
    info = sample.info()
    assert isinstance(info, ErrorInfo)
    assert (info.message, info.retryable) == (sample.message, sample.retryable)
    assert sample.to_dict() == info.model_dump(mode="json")
    assert ErrorInfo.model_validate_json(info.model_dump_json()) == info
    assert pickle.loads(pickle.dumps(info)) == info
    step = execution_records.StepState(error=info)
    assert execution_records.StepState.model_validate_json(step.model_dump_json()).error == info


def test_error_details_keep_their_names() -> None:
    quota = errors.QuotaExceeded("agents", 5).to_dict()
    assert (quota["type"], quota["limit"], quota["value"]) == ("QuotaExceeded", "agents", 5.0)
    assert errors.RateLimited("slow down", 2.5).to_dict()["retry_after_s"] == 2.5
    assert "problems" not in errors.NotFound("gone").to_dict()  # no empty detail fields
    result = TaskResult(
        task_id="t", status="failed", error=errors.InputInvalid("input", ["n"]).info()
    )
    assert result.model_dump()["error"]["problems"] == ["n"]


def test_errors_say_whether_retrying_helps() -> None:
    retryable = {cls.__name__ for cls, err in ERRORS.items() if err.retryable}
    assert retryable == {
        "StoreUnavailable",
        "StoreFull",
        "QueueFull",
        "ReplicaDied",
        "TaskTimeout",
        "TaskFailed",
        "ClusterUnavailable",
        "RateLimited",
    }
    assert (
        errors.TaskFailed("boom").retryable is False
    )  # a skill's own error is not retried by default


def test_task_failed_reports_the_skills_error_type() -> None:
    err = pickle.loads(pickle.dumps(errors.TaskFailed("no key 'x'", "KeyError")))
    assert err.to_dict() == {"type": "KeyError", "message": "no key 'x'", "retryable": False}


def test_agent_not_found_lists_nearest_names() -> None:
    err = errors.AgentNotFound("code.reveiw", ["code.review", "code.reviews", "data.load"])
    assert err.message.startswith("no agent serves 'code.reveiw'; did you mean ")
    assert "'code.review'" in err.message
    assert "data.load" not in err.message
    assert err.wanted == "code.reveiw"


def test_agent_not_found_without_near_names_lists_known_ones() -> None:
    err = errors.AgentNotFound("zzz", ["data.load", "code.review"])
    assert err.message == "no agent serves 'zzz'; known: 'code.review', 'data.load'"
    assert errors.AgentNotFound("zzz").message == "no agent serves 'zzz'; no agents are registered"


def test_spec_invalid_lists_every_problem() -> None:
    err = errors.SpecInvalid(
        "workflow 'review'", ["step 'b' needs unknown step 'x'", "step 'c': bad"]
    )
    assert (
        err.message
        == "workflow 'review' is invalid: step 'b' needs unknown step 'x'; step 'c': bad"
    )
    assert err.problems == ("step 'b' needs unknown step 'x'", "step 'c': bad")
    assert err.to_dict()["problems"] == ["step 'b' needs unknown step 'x'", "step 'c': bad"]
    assert err.status_code == 422


# -- workflows: specs people write, records Redis keeps, and their errors -------------------

import workflows.execution as execution_records  # noqa: E402
import workflows.spec as workflow_spec  # noqa: E402
from workflows.engine import StepFailed  # noqa: E402
from workflows.expressions import ExpressionError  # noqa: E402

WORKFLOW = workflow_spec.WorkflowSpec.model_validate({
    "name": "review",
    "inputs": {"root": {"type": "string"}, "top": {"type": "integer", "default": 3}},
    "outputs": {"report": "${{ steps.merge.output }}"},
    "steps": [
        {"id": "ls", "uses": "repo.list", "with": {"root": "${{ inputs.root }}"},
         "retry": {"attempts": 3, "on": ["QueueFull"]}, "timeout_s": 5},
        {"id": "each", "uses": "agent:analyser@>=1,<2", "with": {"p": "${{ item }}"},
         "for_each": {"items": "steps.ls.output", "as": "item", "join": 2}, "on_error": "continue"},
        {"id": "merge", "uses": "workflow:merge", "needs": ["each"], "when": "inputs.top > 0",
         "approval": {"prompt": "ok?", "timeout_s": 60, "on_timeout": "fail"},
         "on_error": {"fallback": "ls"}},
    ],
})  # fmt: skip
STEP_ERROR = ErrorInfo(type="TaskTimeout", message="late", retryable=True)
STATE = execution_records.StepState(
    status=execution_records.StepStatus.SUCCEEDED, attempts=2, output={"n": [1]}, error=STEP_ERROR,
    started_at=1.0, finished_at=2.0, items=["each[0]"],
    approval=execution_records.ApprovalDecision(decision="approved", by="ann", reason="ok", at=3.0),
)  # fmt: skip
WORKFLOW_CONTRACTS: dict[type[BaseModel], BaseModel] = {
    workflow_spec.WorkflowSpec: WORKFLOW,
    workflow_spec.StepSpec: WORKFLOW.steps[2],
    workflow_spec.InputSpec: WORKFLOW.inputs["top"],
    workflow_spec.ForEach: WORKFLOW.steps[1].for_each,  # type: ignore[dict-item]
    workflow_spec.StepRetry: WORKFLOW.steps[0].retry,
    workflow_spec.Fallback: workflow_spec.Fallback(fallback="ls"),
    workflow_spec.Approval: WORKFLOW.steps[2].approval,  # type: ignore[dict-item]
    workflow_spec.Trigger: workflow_spec.Trigger(
        topic="repo.changed", inputs={"p": "${{ message.payload.p }}"}
    ),
    execution_records.ApprovalDecision: STATE.approval,  # type: ignore[dict-item]
    execution_records.StepState: STATE,
    execution_records.Execution: execution_records.Execution(
        id="e1",
        workflow="review",
        version=2,
        status=execution_records.ExecutionStatus.PAUSED,
        inputs={"root": "."},
        outputs={"report": "r.md"},
        steps={"ls": STATE},
        parent="p1",
        created_at=1.0,
        updated_at=2.0,
    ),
    execution_records.Event: execution_records.Event(
        type="step.succeeded", execution="e1", step="ls", data={"a": 1}, at=4.0
    ),
}
WORKFLOW_ERRORS = [ExpressionError("bad expression", "1 +", 1, 3), StepFailed(STEP_ERROR)]


def test_every_workflow_contract_has_a_sample() -> None:
    defined = {
        obj
        for module in (workflow_spec, execution_records)
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseModel) and obj.__module__ == module.__name__
        and obj not in (workflow_spec.Contract, execution_records.Record)
    }  # fmt: skip
    assert defined == set(WORKFLOW_CONTRACTS)


@pytest.mark.parametrize("sample", [*WORKFLOW_CONTRACTS.values(), *WORKFLOW_ERRORS], ids=repr)
def test_workflow_round_trip(sample: Any) -> None:
    test_round_trip(sample)
