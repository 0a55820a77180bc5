"""LLMEffects against the session's real Valkey: replies paid once, tool calls run once,
budgets, and what a runner that died leaves behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.llm_effects import LLMEffects
from actors.models import AgentSpec, BudgetConfig, LLMConfig, Task, TaskContext
from cluster.errors import BudgetExceeded, BudgetNeedsApproval, TaskFailed, ToolMayHaveRun
from cluster.llm.prices import Prices
from cluster.llm.usage import UsageLedger, WorkflowBudget
from cluster.metrics import REGISTRY
from cluster.redact import MASK, register_secret
from cluster.store import Store

PRICES = Prices.model_validate(
    {"providers": {"openai": {"models": {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}}}}
)


def agent(budget: BudgetConfig | None = None) -> AgentSpec:
    return AgentSpec(
        name="writer",
        capabilities=["text.write"],
        kind="llm",
        llm=LLMConfig(provider="openai", model="gpt-4o-mini", budget=budget),
    )


def task(attempt: int = 1, execution: str | None = "e1", **context: Any) -> Task:
    return Task(
        id="t1",
        capability="text.write",
        context=TaskContext(
            execution_id=execution, step_id="draft", step_attempt=attempt, **context
        ),
    )


class Model:
    """A scripted model: counts the calls it was paid for."""

    def __init__(self, tokens: tuple[int, int] = (1000, 500), delay_s: float = 0) -> None:
        self.calls = 0
        self.tokens = tokens
        self.delay_s = delay_s

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        usage = {"input_tokens": self.tokens[0], "output_tokens": self.tokens[1]}
        return {"model": "gpt-4o-mini-2024-07-18", "text": f"reply {self.calls}", "usage": usage}


def effects(store: Store, spec: AgentSpec | None = None, t: Task | None = None) -> LLMEffects:
    return LLMEffects.for_task(store, spec or agent(), t or task(), PRICES)


def tokens_counted(tenant: str) -> float:
    sample = REGISTRY.get_sample_value(
        "dafnck_llm_tokens_total",
        {"provider": "openai", "model": "gpt-4o-mini", "tenant": tenant, "direction": "input"},
    )
    return sample or 0.0


async def test_a_resumed_task_replays_completed_replies_without_paying(store: Store) -> None:
    model = Model()
    counted = tokens_counted(store.tenant)
    first = effects(store)
    reply = await first.model_call(0, model, estimated_tokens=100)
    again = effects(store)  # the same step attempt, run again after a crash
    assert await again.model_call(0, model, estimated_tokens=100) == reply
    assert model.calls == 1
    assert again.usage()["replayed_calls"] == 1
    assert again.usage()["input_tokens"] == 1000  # the task's usage includes the replay
    ledger = UsageLedger(store)
    tenant = ledger.tenant_report()
    assert (tenant["input_tokens"], tenant["output_tokens"], tenant["calls"]) == (1000, 500, 1)
    assert tenant["cost_usd"] == pytest.approx(0.002)  # priced by prefix: 1000*1 + 500*2 per M
    assert tenant["models"]["openai/gpt-4o-mini"]["calls"] == 1
    execution = ledger.execution_report("e1")
    assert execution["steps"]["draft"]["output_tokens"] == 500
    assert tokens_counted(store.tenant) - counted == 1000  # the metric, once too


async def test_another_attempt_or_turn_calls_the_model_again(store: Store) -> None:
    model = Model()
    await effects(store).model_call(0, model, 10)
    await effects(store).model_call(1, model, 10)
    await effects(store, t=task(attempt=2)).model_call(0, model, 10)
    assert model.calls == 3
    # the router's retry after a replica died is the same step attempt: it replays
    retried = task(attempt=2).context.model_copy(update={"attempt": 2})
    await effects(store, t=task().model_copy(update={"context": retried})).model_call(0, model, 10)
    assert model.calls == 3


async def test_outside_a_workflow_the_task_id_keys_the_cache(store: Store) -> None:
    model = Model()
    await effects(store, t=task(execution=None)).model_call(0, model, 10)
    await effects(store, t=task(execution=None)).model_call(0, model, 10)
    assert model.calls == 1
    assert UsageLedger(store).tenant_report()["calls"] == 1


async def test_duplicate_runners_pay_for_one_call(store: Store) -> None:
    model = Model(delay_s=0.3)
    replies = await asyncio.gather(
        effects(store).model_call(0, model, 10), effects(store).model_call(0, model, 10)
    )
    assert model.calls == 1
    assert replies[0] == replies[1]


async def test_a_tool_call_runs_once(store: Store) -> None:
    runs = []

    async def send() -> dict[str, Any]:
        runs.append(1)
        return {"sent": True, "id": 7}

    first = await effects(store).tool_call("call_1", "send", {"to": "a"}, send)
    again = await effects(store).tool_call("call_1", "send", {"to": "a"}, send)
    assert first == again == {"sent": True, "id": 7}
    assert len(runs) == 1
    calls = await effects(store).journal.calls()
    assert calls["call_1"]["status"] == "succeeded"


async def test_a_tool_that_raised_is_journalled_and_may_run_again(store: Store) -> None:
    outcomes: list[Any] = [RuntimeError("smtp down"), {"sent": True}]

    async def send() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(RuntimeError):
        await effects(store).tool_call("c", "send", {}, send)
    entry = (await effects(store).journal.calls())["c"]
    assert entry["status"] == "failed" and entry["error"]["message"] == "smtp down"
    assert await effects(store).tool_call("c", "send", {}, send) == {"sent": True}


async def started_by_a_runner_that_died(store: Store) -> LLMEffects:
    dead = effects(store)
    await dead.journal.record("c9", {"name": "charge", "args": {}, "status": "started"})
    return effects(store)


async def test_a_call_whose_runner_died_may_have_run(store: Store) -> None:
    fx = await started_by_a_runner_that_died(store)

    async def charge() -> str:
        raise AssertionError("a non-idempotent tool must not run again")

    with pytest.raises(ToolMayHaveRun, match="'charge' \\(call c9\\)"):
        await fx.tool_call("c9", "charge", {}, charge)
    assert (await fx.journal.calls())["c9"]["status"] == "may_have_run"
    with pytest.raises(ToolMayHaveRun):  # and stays so
        await effects(store).tool_call("c9", "charge", {}, charge)


async def test_an_idempotent_tool_whose_runner_died_runs_again(store: Store) -> None:
    fx = await started_by_a_runner_that_died(store)

    async def lookup() -> str:
        return "found"

    assert await fx.tool_call("c9", "lookup", {}, lookup, idempotent=True) == "found"
    assert (await fx.journal.calls())["c9"]["status"] == "succeeded"


async def test_the_task_budget_stops_the_next_call(store: Store) -> None:
    fx = effects(store, agent(BudgetConfig(max_tokens=1200)))
    await fx.model_call(0, Model(), 10)  # the call that crosses the budget completes
    with pytest.raises(BudgetExceeded, match="1500 of 1200 tokens"):
        await fx.model_call(1, Model(), 10)
    paused = effects(store, agent(BudgetConfig(max_cost_usd=0.001, on_exceeded="pause")))
    await paused.model_call(0, Model(), 10)  # a replay still counts toward the task's budget
    with pytest.raises(BudgetNeedsApproval):
        await paused.model_call(1, Model(), 10)


async def test_the_workflow_budget_counts_the_whole_execution(store: Store) -> None:
    budget = WorkflowBudget(max_cost_usd=0.003, on_exceed="approval")
    other_step = Task(
        id="t0",
        capability="text.write",
        context=TaskContext(execution_id="e1", step_id="outline", budget=budget),
    )
    await effects(store, t=other_step).model_call(0, Model(), 10)
    fx = effects(store, t=task(budget=budget))
    await fx.model_call(0, Model(), 10)
    with pytest.raises(BudgetNeedsApproval, match="execution e1 reached its workflow budget"):
        await fx.model_call(1, Model(), 10)
    waived = effects(store, t=task(budget=budget, budget_waived=True))
    await waived.model_call(1, Model(), 10)
    failing = effects(store, t=task(budget=WorkflowBudget(max_tokens=10)))
    with pytest.raises(BudgetExceeded) as info:
        await failing.model_call(2, Model(), 10)
    assert type(info.value) is BudgetExceeded


async def test_a_failed_call_never_carries_the_key(store: Store) -> None:
    secret = "canary-0f9e8d7c6b5a4f3e"
    register_secret(secret)

    async def echoing() -> dict[str, Any]:
        raise ValueError(f"401: invalid key {secret} (Authorization: Bearer {secret})")

    with pytest.raises(TaskFailed) as info:
        await effects(store).model_call(0, echoing, 10)
    assert secret not in str(info.value) and MASK in str(info.value)
    assert info.value.retryable is False


async def test_a_reply_without_usage_is_refused(store: Store) -> None:
    async def bare() -> dict[str, Any]:
        return {"model": "m", "text": "hi"}

    with pytest.raises(TaskFailed, match=r"usage\.input_tokens"):
        await effects(store).model_call(0, bare, 10)


async def test_a_paid_call_settles_its_real_tokens_with_the_rate_limit(store: Store) -> None:
    prices = Prices.model_validate({"providers": {"openai": {
        "limits": {"requests_per_minute": 100, "tokens_per_minute": 10_000}}}})  # fmt: skip
    fx = LLMEffects.for_task(store, agent(), task(), prices)
    await fx.model_call(0, Model(tokens=(1000, 500)), estimated_tokens=10)
    assert await fx.limiter.try_acquire("openai", "gpt-4o-mini", 8_000) == 0  # 8,500 were left
    assert await fx.limiter.try_acquire("openai", "gpt-4o-mini", 600) > 0  # 500 are left
    assert not await fx.journal.lease_held("turn:1:0")  # let go in the same write


async def test_operators_see_every_journalled_call_of_an_execution(store: Store) -> None:
    from actors.llm_journal import execution_tool_calls

    async def ok() -> str:
        return "fine"

    await effects(store).tool_call("c1", "lookup", {"q": 1}, ok)
    await (await started_by_a_runner_that_died(store)).journal.record(
        "c9", {"name": "charge", "args": {}, "status": "may_have_run"}
    )
    calls = execution_tool_calls(store, "e1")
    assert {c: e["status"] for c, e in calls["draft"].items()} == {
        "c1": "succeeded",
        "c9": "may_have_run",
    }
    assert calls["draft"]["c1"]["args"] == {"q": 1} and calls["draft"]["c1"]["result"] == "fine"
    assert execution_tool_calls(store, "other") == {}
