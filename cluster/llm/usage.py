"""Token and cost accounting of LLM calls: per task (in its result), per execution, per
workflow and per tenant (Redis hashes incremented with HINCRBYFLOAT), and the budgets
they are checked against.

Every paid call is counted once, in the same MULTI/EXEC that caches its reply, so a crash
never counts a call without caching it (or the other way round).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from cluster.contracts import Contract

if TYPE_CHECKING:  # a contract module (actors.models) imports this one: keep it light
    from cluster.store import Store

#: The totals every usage hash and every task result carry.
TOTALS = ("input_tokens", "output_tokens", "cost_usd", "calls")


class WorkflowBudget(Contract):
    """What one execution of a workflow may spend on models, and what happens past it."""

    max_tokens: int | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    #: "fail" stops the step that ran out (so the workflow fails unless its on_error says
    #: otherwise); "approval" holds that step at an approval gate until a person decides.
    on_exceed: Literal["fail", "approval"] = "fail"

    @model_validator(mode="after")
    def _some_limit(self) -> WorkflowBudget:
        if self.max_tokens is None and self.max_cost_usd is None:
            raise ValueError("a budget needs max_tokens, max_cost_usd or both")
        return self


@dataclass
class Usage:
    """Tokens and cost of some model calls."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.calls += other.calls

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cost_usd": round(self.cost_usd, 8)}

    @classmethod
    def from_hash(cls, raw: dict[str, str], prefix: str = "") -> Usage:
        def num(name: str) -> float:
            return float(raw.get(prefix + name) or 0)

        return cls(
            int(num("input_tokens")), int(num("output_tokens")), num("cost_usd"), int(num("calls"))
        )

    def over(self, max_tokens: int | None, max_cost_usd: float | None) -> str | None:
        """Which limit this usage has reached, in words; None while under both."""
        if max_tokens is not None and self.tokens >= max_tokens:
            return f"{self.tokens} of {max_tokens} tokens"
        if max_cost_usd is not None and self.cost_usd >= max_cost_usd:
            return f"${self.cost_usd:.6f} of ${max_cost_usd:g}"
        return None


@dataclass(frozen=True)
class Charge:
    """One paid call, and everything it is counted against."""

    provider: str
    model: str
    usage: Usage
    execution_id: str | None = None
    step_id: str | None = None
    workflow: str | None = None


class UsageLedger:
    """The tenant's usage hashes in Redis: totals, per model, per execution and workflow."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def tenant_key(self) -> str:
        return self.store.key("llm", "usage")

    def execution_key(self, execution_id: str) -> str:
        return self.store.key("llm", "usage", "execution", execution_id)

    def workflow_key(self, workflow: str) -> str:
        return self.store.key("llm", "usage", "workflow", workflow)

    def day_key(self, when: float | None = None) -> str:
        """The tenant's usage of one UTC day (the `llm_usd_per_day` quota's count)."""
        day = time.strftime("%Y-%m-%d", time.gmtime(time.time() if when is None else when))
        return self.store.key("llm", "usage", "day", day)

    async def day_usage(self) -> Usage:
        return Usage.from_hash(await self.store.async_redis().hgetall(self.day_key()))

    def charge(self, pipe: Any, charge: Charge) -> None:
        """Queue the increments of one paid call on `pipe` (a MULTI the caller executes)."""
        model = f"model:{charge.provider}/{charge.model}:"
        _increment(pipe, self.tenant_key(), charge.usage, "", model)
        day = self.day_key()
        _increment(pipe, day, charge.usage, "")
        pipe.expire(day, 2 * 86_400)  # kept past its day only for the report of yesterday
        if charge.execution_id:
            step = f"step:{charge.step_id}:" if charge.step_id else None
            _increment(pipe, self.execution_key(charge.execution_id), charge.usage, "", step)
        if charge.workflow:
            _increment(pipe, self.workflow_key(charge.workflow), charge.usage, "")

    async def execution_usage(self, execution_id: str) -> Usage:
        raw = await self.store.async_redis().hgetall(self.execution_key(execution_id))
        return Usage.from_hash(raw)

    def tenant_report(self) -> dict[str, Any]:
        """The tenant's totals and each model's (for `GET /v1/usage`)."""
        return _report(self.store.call(self.store.redis.hgetall, self.tenant_key()), "models")

    def execution_report(self, execution_id: str) -> dict[str, Any]:
        """An execution's totals and each step's."""
        raw = self.store.call(self.store.redis.hgetall, self.execution_key(execution_id))
        return _report(raw, "steps")

    def workflow_report(self, workflow: str) -> dict[str, Any]:
        raw = self.store.call(self.store.redis.hgetall, self.workflow_key(workflow))
        return Usage.from_hash(raw).as_dict()


def _increment(pipe: Any, key: str, usage: Usage, *prefixes: str | None) -> None:
    for prefix in prefixes:
        if prefix is None:
            continue
        pipe.hincrby(key, prefix + "input_tokens", usage.input_tokens)
        pipe.hincrby(key, prefix + "output_tokens", usage.output_tokens)
        pipe.hincrbyfloat(key, prefix + "cost_usd", usage.cost_usd)
        pipe.hincrby(key, prefix + "calls", usage.calls)


def _report(raw: dict[str, str], parts: str) -> dict[str, Any]:
    """Totals, and the entries under `model:`/`step:` prefixes grouped by their name."""
    names = {field.rpartition(":")[0] for field in raw if ":" in field}
    return {
        **Usage.from_hash(raw).as_dict(),
        parts: {
            name.partition(":")[2]: Usage.from_hash(raw, name + ":").as_dict()
            for name in sorted(names)
        },
    }


__all__ = ["TOTALS", "Charge", "Usage", "UsageLedger", "WorkflowBudget"]
