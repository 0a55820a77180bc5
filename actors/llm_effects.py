"""The durable side of one LLM task: journal, response cache, limits, usage and memory.

The agent runtime (actors.llm) asks `LLMEffects` to make every model call and every tool
call, so that a task run again — a retry on another replica, a step dispatched again
after a supervisor restart, a step approved past its budget — pays for no completed
model call twice and runs no completed tool call twice:

- a model reply is cached under (execution, step, attempt, turn) in the same MULTI/EXEC
  that counts its tokens and cost; a run that finds it replays it for free;
- a tool call is journalled under (execution, step, call id) as started before it runs
  and with its result after; a run that finds the result returns it; one that finds it
  started by a runner that died marks it `may_have_run` and runs it again only if the
  tool is idempotent, else raises ToolMayHaveRun;
- a call another live runner is making is waited for, not made twice (see llm_journal).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors.llm_journal import Journal
from actors.llm_memory import ConversationMemory
from actors.models import AgentSpec, LLMConfig, Task
from cluster.errors import (
    BudgetExceeded,
    BudgetNeedsApproval,
    DafnckError,
    QuotaExceeded,
    SpecInvalid,
    TaskFailed,
    ToolMayHaveRun,
)
from cluster.llm.limits import RateLimiter
from cluster.llm.prices import Prices, default_prices
from cluster.llm.usage import Charge, Usage, UsageLedger
from cluster.metrics import record_tokens
from cluster.quotas import Quotas
from cluster.redact import redact
from cluster.store import Store

log = logging.getLogger(__name__)


class LLMEffects:
    """The durable side of one LLM task: journal, response cache, limits, usage, memory."""

    def __init__(
        self,
        store: Store,
        spec: AgentSpec,
        task: Task,
        prices: Prices,
        quotas: Quotas | None = None,
    ) -> None:
        if spec.llm is None:
            raise SpecInvalid(f"agent {spec.agent_id!r}", ["llm: required for kind 'llm'"])
        self.store = store
        self.spec = spec
        self.llm: LLMConfig = spec.llm
        self.task = task
        self.prices = prices
        #: The tenant's `llm_usd_per_day` (no cap when None).
        self.quotas = quotas or Quotas()
        context = task.context
        self.execution_id = context.execution_id
        scope = context.execution_id or f"task:{task.id}"
        self.step = context.step_id or "-"
        #: Replies are cached per step attempt; the router's retries (after a replica died)
        #: and tasks outside a workflow go on under the same one, replaying what is done.
        self.attempt = context.step_attempt or 1
        self.journal = Journal(store, scope, self.step, self.attempt)
        self.ledger = UsageLedger(store)
        self.limiter = RateLimiter(store, prices)
        self.memory = ConversationMemory(store, spec.name, self.llm.memory)
        self._usage = Usage()
        self._replayed = 0
        self._appends = 0

    @classmethod
    def for_task(
        cls,
        store: Store,
        spec: AgentSpec,
        task: Task,
        prices: Prices | None = None,
        quotas: Quotas | None = None,
    ) -> LLMEffects:
        """Raises: SpecInvalid (not an llm agent, or the prices file is invalid)."""
        return cls(store, spec, task, prices or default_prices(), quotas)

    # -- model calls ----------------------------------------------------------------------

    async def model_call(
        self, turn: int, call: Callable[[], Awaitable[dict[str, Any]]], estimated_tokens: int
    ) -> dict[str, Any]:
        """The reply for this turn: replayed when cached, else paid for once.

        Raises:
            BudgetExceeded (or BudgetNeedsApproval): a budget was reached before the call.
            RateLimited: no room in the rate limits within the task's timeout.
            TaskFailed: the call raised (its message redacted).
        """
        entry = await self.journal.reply(turn)
        if entry is None:

            async def answered() -> bool:
                return await self.journal.reply(turn) is not None

            lease = f"turn:{self.attempt}:{turn}"
            async with self.journal.lease(lease, answered) as mine:
                entry = await self.journal.reply(turn)
                if entry is None and mine:
                    entry = await self._pay(turn, call, estimated_tokens, lease)
                    self._usage.add(_usage_of(entry))
                    return dict(entry["reply"])
        assert entry is not None
        self._usage.add(_usage_of(entry))
        self._replayed += 1
        return dict(entry["reply"])

    async def _pay(
        self, turn: int, call: Callable[[], Awaitable[dict[str, Any]]], estimated: int, lease: str
    ) -> dict[str, Any]:
        await self.check_budgets()
        provider, model = self.llm.provider, self.llm.model
        timeout_s = self.task.timeout_s or self.spec.timeout_s
        await self.limiter.acquire(provider, model, estimated, timeout_s)
        try:
            reply = await call()
        except DafnckError as exc:
            exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
            raise
        except Exception as exc:  # the SDK's error, which may quote what the server echoed
            raise TaskFailed(
                redact(f"{provider} model {model!r} failed: {exc}"), type(exc).__name__
            ) from None
        usage = _reply_usage(reply, self.spec)
        usage.cost_usd = self.prices.cost_usd(
            provider, str(reply.get("model") or model), usage.input_tokens, usage.output_tokens
        )
        # As a replay will see it (JSON), so a first run and a replay go on alike.
        entry = {"reply": _json_safe(reply), "cost_usd": usage.cost_usd}
        pipe = self.store.async_redis().pipeline(transaction=True)
        self.journal.save_reply(pipe, turn, entry)
        self.ledger.charge(
            pipe,
            Charge(provider, model, usage, self.execution_id, self.task.context.step_id,
                   self.task.context.workflow_id),
        )  # fmt: skip
        await self.limiter.settle(provider, model, usage.tokens - estimated, pipe)
        self.journal.release_in(pipe, lease)
        await pipe.execute()  # one write: the reply, its cost, the bucket, the lease
        record_tokens(provider, model, self.store.tenant, usage.input_tokens,
                      usage.output_tokens, usage.cost_usd)  # fmt: skip
        return entry

    async def check_budgets(self) -> None:
        """Refuse a call once the task's or the workflow's budget is reached.

        The call that crosses a budget completes; no further one starts. A step approved
        past its budget (`budget_waived`) is not checked.

        Raises:
            BudgetExceeded, or BudgetNeedsApproval when the budget's policy asks a person;
            QuotaExceeded: the tenant's spend today reached `llm_usd_per_day` (a person's
            approval does not waive it).
        """
        await self._check_day()
        context = self.task.context
        if context.budget_waived:
            return
        own = self.llm.budget
        over = own and self._usage.over(own.max_tokens, own.max_cost_usd)
        if own and over:
            error = BudgetNeedsApproval if own.on_exceeded == "pause" else BudgetExceeded
            raise error(
                f"task {self.task.id} of agent {self.spec.name!r} reached its budget ({over})"
            )
        budget = context.budget
        if budget is None or not self.execution_id:
            return
        used = await self.ledger.execution_usage(self.execution_id)
        over = used.over(budget.max_tokens, budget.max_cost_usd)
        if over:
            error = BudgetNeedsApproval if budget.on_exceed == "approval" else BudgetExceeded
            raise error(f"execution {self.execution_id} reached its workflow budget ({over})")

    async def _check_day(self) -> None:
        """Raises: QuotaExceeded (llm_usd_per_day)."""
        cap = self.quotas.llm_usd_per_day
        if cap is None:
            return
        spent = (await self.ledger.day_usage()).cost_usd
        if spent >= cap:
            raise QuotaExceeded(
                "llm_usd_per_day",
                cap,
                f"tenant {self.store.tenant!r} spent ${spent:.4f} on models today (UTC)",
            )

    # -- tool calls -----------------------------------------------------------------------

    async def tool_call(
        self,
        call_id: str,
        name: str,
        args: dict[str, Any],
        run: Callable[[], Awaitable[Any]],
        *,
        idempotent: bool = False,
    ) -> Any:
        """The tool's result: recorded when this call completed before, else run once.

        Raises:
            ToolMayHaveRun: a runner died during this call and the tool is not idempotent.
            Whatever `run` raises (journalled as failed; a failed call may run again).
        """
        entry = await self.journal.call(call_id)
        if entry is None or entry["status"] != "succeeded":

            async def finished() -> bool:
                found = await self.journal.call(call_id)
                return found is not None and found["status"] == "succeeded"

            async with self.journal.lease(f"call:{call_id}", finished) as mine:
                entry = await self.journal.call(call_id)
                if mine and (entry is None or entry["status"] != "succeeded"):
                    return await self._run_tool(call_id, name, args, run, entry, idempotent)
        assert entry is not None
        return entry["result"]

    async def _run_tool(
        self,
        call_id: str,
        name: str,
        args: dict[str, Any],
        run: Callable[[], Awaitable[Any]],
        entry: dict[str, Any] | None,
        idempotent: bool,
    ) -> Any:
        base = {"name": name, "args": args, "attempt": self.attempt, "owner": self.journal.owner}
        if entry is not None and entry["status"] in ("started", "may_have_run"):
            await self.journal.record(call_id, {**entry, "status": "may_have_run"})
            if not idempotent:
                raise ToolMayHaveRun(
                    f"tool {name!r} (call {call_id}) of step {self.step!r} may have run: its "
                    "runner died before recording the result; check its effect, or mark the "
                    "tool idempotent so it may run again"
                )
            log.warning(
                "tool %s (call %s) may have run; running it again (idempotent)", name, call_id
            )
        await self.journal.record(call_id, {**base, "status": "started"})
        try:
            result = _json_safe(await run())
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": redact(str(exc))}
            await self.journal.record(call_id, {**base, "status": "failed", "error": error})
            raise
        done = {**base, "status": "succeeded", "result": result}
        await self.journal.record(call_id, done, release=f"call:{call_id}")
        return result

    # -- memory and usage -----------------------------------------------------------------

    async def memory_load(self, session: str) -> list[dict[str, Any]]:
        """The session's messages, oldest first; [] when the agent keeps no memory."""
        return await self.memory.load(session)

    async def memory_append(self, session: str, messages: list[dict[str, Any]]) -> None:
        """Append once: a task run again after a crash does not append the same turn twice."""
        self._appends += 1
        append_id = f"{self.journal.calls_key}:{self.attempt}:{self._appends}"
        await self.memory.append(session, messages, append_id)

    def usage(self) -> dict[str, Any]:
        """Tokens and cost of this task (replayed replies included, counted once in totals)."""
        return {**self._usage.as_dict(), "replayed_calls": self._replayed}


def _reply_usage(reply: dict[str, Any], spec: AgentSpec) -> Usage:
    try:
        usage = reply["usage"]
        return Usage(int(usage["input_tokens"]), int(usage["output_tokens"]), 0.0, 1)
    except (KeyError, TypeError, ValueError):
        raise TaskFailed(
            f"agent {spec.agent_id!r}: a model reply must carry usage.input_tokens and "
            "usage.output_tokens",
            "LLMReplyInvalid",
        ) from None


def _usage_of(entry: dict[str, Any]) -> Usage:
    usage = entry["reply"]["usage"]
    return Usage(
        int(usage["input_tokens"]), int(usage["output_tokens"]), float(entry["cost_usd"]), 1
    )


def _json_safe(value: Any) -> Any:
    """The value as a replay would return it (JSON), so a first run and a replay agree."""
    import json

    from actors.llm_journal import dumps

    return json.loads(dumps(value))


__all__ = ["LLMEffects"]
