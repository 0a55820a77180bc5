"""The tenant's task_records quota against the real session Valkey: a record past it is
refused naming the limit and is absent; records that expired stop counting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.models import Task
from actors.task_records import TaskRecords
from cluster.errors import NotFound, QuotaExceeded
from cluster.quotas import Quotas
from cluster.store import Store


@pytest.fixture
async def store(store: Store) -> AsyncIterator[Store]:
    yield store
    await store.async_redis().aclose()


def task() -> Task:
    return Task(capability="test.echo", input={"text": "a"})


async def test_a_record_past_the_quota_is_refused_and_absent(store: Store) -> None:
    records = TaskRecords(store, Quotas(task_records=2))
    kept = [task(), task()]
    for t in kept:
        await records.create(t)
    extra = task()
    with pytest.raises(QuotaExceeded) as refused:
        await records.create(extra)
    assert refused.value.limit == "task_records"
    with pytest.raises(NotFound):
        await records.get(extra.id)
    # Records whose day has passed stop counting.
    await store.async_redis().zadd(store.key("tasks", "kept"), {kept[0].id: 1.0})
    await records.create(extra)
    assert (await records.get(extra.id))["status"] == "pending"
