"""The tenant's daily LLM spend cap against the real session Valkey: once today's spend
reaches `llm_usd_per_day`, no further call is paid for, in any task of the tenant, even
one a person approved past its own budget."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.llm_effects import LLMEffects
from cluster.errors import QuotaExceeded
from cluster.llm.usage import UsageLedger
from cluster.quotas import Quotas
from cluster.store import Store
from tests.unit.actors.test_llm_effects import PRICES, Model, agent, task


@pytest.fixture
async def store(store: Store) -> AsyncIterator[Store]:
    yield store
    await store.async_redis().aclose()


async def test_the_daily_cap_stops_every_task_of_the_tenant(store: Store) -> None:
    capped = Quotas(llm_usd_per_day=0.002)  # one call costs $0.002 (1000 in, 500 out)
    first = LLMEffects.for_task(store, agent(), task(execution="e1"), PRICES, capped)
    model = Model()
    await first.model_call(0, model, 10)
    other = LLMEffects.for_task(
        store, agent(), task(execution="e2", budget_waived=True), PRICES, capped
    )
    with pytest.raises(QuotaExceeded) as refused:
        await other.model_call(0, model, 10)
    assert refused.value.limit == "llm_usd_per_day" and model.calls == 1
    day = await UsageLedger(store).day_usage()
    assert day.calls == 1 and day.cost_usd == pytest.approx(0.002)
    uncapped = LLMEffects.for_task(store, agent(), task(execution="e3"), PRICES)
    await uncapped.model_call(0, model, 10)  # no cap set: the call is paid
    assert model.calls == 2
