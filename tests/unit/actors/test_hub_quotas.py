"""The tenant's topics quota against the real session Valkey: a new topic past it is
refused naming the limit and nothing is published on it; known topics keep working, and
every hub of the tenant (every API replica) shares the count."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.hub import CommunicationHub
from actors.messages import Message
from actors.registry import AgentRegistry
from cluster.errors import QuotaExceeded
from cluster.quotas import Quotas
from cluster.store import Store


@pytest.fixture
async def store(store: Store) -> AsyncIterator[Store]:
    yield store
    await store.async_redis().aclose()


def msg(n: int) -> Message:
    return Message(sender="tester", type="note", payload={"n": n})


async def test_a_new_topic_past_the_quota_is_refused_and_holds_nothing(store: Store) -> None:
    hub = CommunicationHub(store, AgentRegistry(store), quotas=Quotas(topics=2))
    await hub.publish("a", msg(1))
    await hub.publish("b", msg(2))
    with pytest.raises(QuotaExceeded) as refused:
        await hub.publish("c", msg(3))
    assert refused.value.limit == "topics" and refused.value.status_code == 429
    assert not await store.async_redis().exists(hub.topic_key("c"))
    await hub.publish("a", msg(4))  # a topic already counted goes on
    other = CommunicationHub(store, AgentRegistry(store), quotas=Quotas(topics=2))
    with pytest.raises(QuotaExceeded):
        await other.subscribe_to_topic("d")
    await other.subscribe_to_topic("b")
