"""The communication hub, event bus and message queue on the session's real Valkey, no Ray."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from actors.hub import CommunicationHub, EventBus, Forbidden, MessageQueue
from actors.messages import DomainEvent, Message, Subscription
from actors.models import AgentRecord, AgentSpec, AgentStatus
from actors.queues import QUEUE_GROUP
from actors.registry import AgentRegistry
from cluster.errors import AgentNotFound, NotFound, QueueFull, SpecInvalid
from cluster.store import Store
from tests.unit.waiting import idle_past, until_some


def record(name: str, *capabilities: str, status: AgentStatus = AgentStatus.ACTIVE) -> AgentRecord:
    spec = AgentSpec(name=name, capabilities=list(capabilities), entrypoint="m:f")
    return AgentRecord(spec=spec, status=status)


@pytest.fixture
async def store(store: Store) -> AsyncIterator[Store]:
    yield store
    await store.async_redis().aclose()


@pytest.fixture
def registry(store: Store) -> AgentRegistry:
    registry = AgentRegistry(store)
    registry.register_agent(record("alpha", "text.summarize"))
    registry.register_agent(record("beta", "text.summarize", "text.translate"))
    registry.register_agent(record("gamma", "code.review"))
    registry.register_agent(record("delta", "text.summarize", status=AgentStatus.DISABLED))
    return registry


@pytest.fixture
def hub(store: Store, registry: AgentRegistry) -> CommunicationHub:
    return CommunicationHub(store, registry)


def msg(n: int = 0, sender: str = "tester", **fields: Any) -> Message:
    return Message(sender=sender, type="note", payload={"n": n}, **fields)


async def inbox(hub: CommunicationHub, agent: str, consumer: str = "r1") -> list[Message]:
    (reader, *_) = await hub.readers(agent, consumer)
    deliveries = await reader.read(count=1000)
    await reader.ack(*[d.id for d in deliveries])
    return [Message.from_fields(d.fields) for d in deliveries]


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- direct messages -------------------------------------------------------------------------


async def test_send_reaches_the_agents_replica_stamped(hub: CommunicationHub, store: Store) -> None:
    sent = msg(1)
    result = await hub.send_message(sent, "alpha")
    (got,) = await inbox(hub, "alpha")
    assert (got.id, got.payload, got.sender, got.recipient) == (
        sent.id,
        {"n": 1},
        "tester",
        "alpha",
    )
    assert got.tenant == store.tenant
    assert got.correlation_id == sent.id == result.correlation_id
    assert got.trace_id is not None and got.trace_id == result.trace_id
    assert result.target == "inbox:alpha"
    assert await inbox(hub, "alpha") == []  # acknowledged: gone from the group


async def test_given_correlation_and_trace_ids_are_kept(hub: CommunicationHub) -> None:
    trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    await hub.send_message(msg(correlation_id="req-1", trace_id=trace), "alpha")
    (got,) = await inbox(hub, "alpha")
    assert (got.correlation_id, got.trace_id) == ("req-1", trace)


async def test_unknown_recipient_names_near_agents(hub: CommunicationHub) -> None:
    with pytest.raises(AgentNotFound) as info:
        await hub.send_message(msg(), "alpah")
    assert "'alpha'" in str(info.value)


async def test_message_for_another_tenant_is_refused(hub: CommunicationHub) -> None:
    with pytest.raises(Forbidden) as info:
        await hub.send_message(msg(tenant="other"), "alpha")
    assert info.value.status_code == 403 and "'other'" in str(info.value)


async def test_order_is_kept_within_an_inbox(hub: CommunicationHub) -> None:
    await hub.send_messages([msg(i) for i in range(20)], "beta")
    await hub.send_message(msg(20), "beta")
    assert [m.payload["n"] for m in await inbox(hub, "beta")] == list(range(21))


async def test_message_of_a_dead_replica_goes_to_another(hub: CommunicationHub) -> None:
    await hub.send_message(msg(7), "alpha")
    (first, *_) = await hub.readers("alpha", "r1", claim_idle_ms=100)
    (second, *_) = await hub.readers("alpha", "r2", claim_idle_ms=100)
    assert len(await first.read()) == 1  # r1 dies mid-handler: no ack
    (again,) = await until_some(second.read, what="the redelivery to r2")
    assert (Message.from_fields(again.fields).payload, again.delivery_count) == ({"n": 7}, 2)


async def test_history_is_trimmed_to_the_retention(store: Store, registry: AgentRegistry) -> None:
    hub = CommunicationHub(store, registry, retention=50)
    await hub.send_messages([msg(i) for i in range(500)], "alpha")
    assert store.redis.xlen(hub.inbox_key("alpha")) < 200
    page = await hub.get_message_history("inbox:alpha", limit=1, newest_first=True)
    assert page.messages[0].payload == {"n": 499}


# -- broadcast -------------------------------------------------------------------------------


async def test_broadcast_by_capability_reaches_active_agents_only(hub: CommunicationHub) -> None:
    result = await hub.broadcast_message(msg(3), capability="text.summarize")
    assert sorted(result.delivered) == ["alpha", "beta"]
    assert [m.payload for m in await inbox(hub, "alpha")] == [{"n": 3}]
    assert [m.recipient for m in await inbox(hub, "beta")] == ["beta"]
    assert await inbox(hub, "gamma") == [] and await inbox(hub, "delta") == []


async def test_broadcast_to_names_and_capability_without_duplicates(hub: CommunicationHub) -> None:
    result = await hub.broadcast_message(msg(), ["gamma", "alpha"], capability="text.summarize")
    assert list(result.delivered) == ["gamma", "alpha", "beta"]
    assert len(await inbox(hub, "alpha")) == 1


async def test_broadcast_needs_known_targets(hub: CommunicationHub) -> None:
    with pytest.raises(SpecInvalid):
        await hub.broadcast_message(msg())
    with pytest.raises(AgentNotFound) as info:
        await hub.broadcast_message(msg(), capability="text.summarise")
    assert "did you mean 'text.summarize'" in str(info.value)
    with pytest.raises(AgentNotFound) as info:
        await hub.broadcast_message(msg(), ["alpha", "nobody"])
    assert "nobody" in str(info.value)
    assert await inbox(hub, "alpha") == []  # nothing sent when any name is wrong


# -- topics ----------------------------------------------------------------------------------


async def test_topic_feed_yields_messages_published_after_subscribing(
    hub: CommunicationHub,
) -> None:
    await hub.publish("news", msg(0))
    feed = await hub.subscribe_to_topic("news")
    for i in (1, 2, 3):
        await hub.publish("news", msg(i))
    got = [await asyncio.wait_for(anext(feed), 3) for _ in range(3)]
    assert [m.payload["n"] for m in got] == [1, 2, 3]
    assert {m.topic for m in got} == {"news"}
    await feed.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(feed)


async def test_agent_subscription_feeds_its_pool(hub: CommunicationHub) -> None:
    await hub.publish("alerts", msg(0))  # before the subscription: not for alpha
    subscription = await hub.subscribe_to_topic("alerts", "alpha")
    assert isinstance(subscription, Subscription) and subscription.subscriber == "alpha"
    await hub.publish("alerts", msg(1))  # before any replica reads: kept for the pool
    assert await hub.topics_of("alpha") == ["alerts"]
    _, topic_reader = await hub.readers("alpha", "r1")
    assert [Message.from_fields(d.fields).payload for d in await topic_reader.read()] == [{"n": 1}]
    await hub.unsubscribe_from_topic("alerts", "alpha")
    assert await hub.topics_of("alpha") == []


async def test_bad_topic_name_is_refused(hub: CommunicationHub) -> None:
    with pytest.raises(SpecInvalid):
        await hub.publish("a:subscribers", msg())


# -- channels --------------------------------------------------------------------------------


async def test_channel_is_for_participants_only(hub: CommunicationHub) -> None:
    channel = await hub.create_channel(["beta"], created_by="alpha")
    assert channel.participants == ["alpha", "beta"]
    await hub.post_to_channel(channel.id, msg(1, sender="beta"))
    with pytest.raises(Forbidden) as info:
        await hub.post_to_channel(channel.id, msg(2, sender="gamma"))
    assert "'gamma'" in str(info.value) and info.value.status_code == 403
    with pytest.raises(Forbidden):
        await hub.read_channel(channel.id, "gamma")
    with pytest.raises(Forbidden):
        await hub.get_message_history(f"channel:{channel.id}")
    page = await hub.read_channel(channel.id, "alpha")
    assert [(m.sender, m.payload, m.channel) for m in page.messages] == [
        ("beta", {"n": 1}, channel.id)
    ]
    with pytest.raises(NotFound):
        await hub.read_channel("nope", "alpha")


# -- history ---------------------------------------------------------------------------------


async def test_history_pages_by_cursor(hub: CommunicationHub) -> None:
    await hub.send_messages([msg(i) for i in range(25)], "gamma")
    seen: list[int] = []
    cursor = None
    for expected in (10, 10, 5):
        page = await hub.get_message_history("inbox:gamma", after=cursor, limit=10)
        assert len(page.messages) == expected
        seen += [m.payload["n"] for m in page.messages]
        cursor = page.next_cursor
    assert seen == list(range(25)) and cursor is None
    newest = await hub.get_message_history("inbox:gamma", limit=10, newest_first=True)
    older = await hub.get_message_history(
        "inbox:gamma", before=newest.next_cursor, limit=10, newest_first=True
    )
    assert [m.payload["n"] for m in older.messages] == list(range(14, 4, -1))


async def test_history_by_time(hub: CommunicationHub) -> None:
    ms: list[int] = []
    for i in range(4):
        result = await hub.send_message(msg(i), "gamma")
        ms.append(int(result.stream_id.split("-")[0]))
        await asyncio.sleep(0.005)
    assert len(set(ms)) == 4
    page = await hub.get_message_history("inbox:gamma", since_ms=ms[1], until_ms=ms[3])
    assert [m.payload["n"] for m in page.messages] == [1, 2]


async def test_bad_history_query_lists_every_problem(hub: CommunicationHub) -> None:
    with pytest.raises(SpecInvalid) as info:
        await hub.get_message_history("mailbox:x", after="1-0", since_ms=5, limit=0)
    problems = info.value.problems
    assert len(problems) == 3 and any("mailbox:x" in p for p in problems)


# -- event bus -------------------------------------------------------------------------------


async def test_event_bus_subscribe_and_unsubscribe(store: Store) -> None:
    bus = EventBus(store, block_ms=100)
    got: list[DomainEvent] = []

    async def handler(event: DomainEvent) -> None:
        got.append(event)

    await bus.publish(DomainEvent(type="agent.created", subject="old"))
    subscription = await bus.subscribe("agent.created", handler)
    await bus.publish(DomainEvent(type="agent.status_changed", subject="alpha"))
    await bus.publish(DomainEvent(type="agent.created", subject="alpha", data={"v": 1}))
    await until(lambda: len(got) == 1)
    assert (got[0].subject, got[0].data, got[0].tenant) == ("alpha", {"v": 1}, store.tenant)
    await bus.unsubscribe(subscription)  # returns once its reader has stopped
    witnessed: list[str] = []

    async def witness(event: DomainEvent) -> None:
        witnessed.append(event.subject)

    await bus.subscribe("agent.created", witness)
    await bus.publish(DomainEvent(type="agent.created", subject="beta"))
    await until(lambda: witnessed == ["beta"])  # out, and a live subscriber has it
    assert [e.subject for e in got] == ["alpha"]
    await bus.close()


async def test_event_pattern_follows_new_types_and_survives_a_failing_handler(store: Store) -> None:
    bus = EventBus(store, block_ms=100)
    got: list[str] = []

    async def handler(event: DomainEvent) -> None:
        if event.subject == "boom":
            raise RuntimeError("handler bug")
        got.append(event.type)

    await bus.publish(DomainEvent(type="execution.started", subject="before"))
    await bus.subscribe("execution.*", handler)
    await bus.publish(DomainEvent(type="execution.started", subject="boom"))
    await bus.publish(DomainEvent(type="step.succeeded", subject="s1"))
    await bus.publish(DomainEvent(type="execution.succeeded", subject="e1"))  # a new type
    await bus.publish(DomainEvent(type="execution.started", subject="e2"))
    await until(lambda: sorted(got) == ["execution.started", "execution.succeeded"])
    await bus.close()


# -- queues ----------------------------------------------------------------------------------


async def test_queue_enqueue_peek_dequeue_ack_and_status(store: Store) -> None:
    queue = MessageQueue(store)
    for i in range(3):
        await queue.enqueue("jobs", msg(i))
    status = await queue.get_queue_status("jobs")
    assert (status.length, status.pending, status.waiting, status.dead_lettered) == (3, 0, 3, 0)
    assert (await queue.peek("jobs")).payload == {"n": 0}  # type: ignore[union-attr]
    first = await queue.dequeue("jobs", "w1")
    assert first is not None and first.payload == {"n": 0} and first.delivery_count == 1
    assert (await queue.peek("jobs")).payload == {"n": 1}  # type: ignore[union-attr]
    status = await queue.get_queue_status("jobs")
    assert (status.length, status.pending, status.consumers, status.waiting) == (3, 1, 1, 2)
    assert await queue.ack("jobs", first.id) is True
    assert (await queue.get_queue_status("jobs")).length == 2
    second = await queue.dequeue("jobs", "w1")
    assert second is not None and await queue.ack("jobs", second.stream_id or "") is True
    assert await queue.dequeue("jobs", "w1") is not None
    assert await queue.dequeue("jobs", "w1") is None
    assert await queue.peek("jobs") is None


async def test_unacked_dequeue_is_redelivered_then_dead_lettered(store: Store) -> None:
    queue = MessageQueue(store, visibility_timeout_ms=100, max_deliveries=2)
    await queue.enqueue("jobs", msg(1))
    assert (await queue.dequeue("jobs", "w1")) is not None  # w1 never acknowledges
    assert await queue.dequeue("jobs", "w2") is None
    again = await until_some(lambda: queue.dequeue("jobs", "w2"), what="the redelivery")
    assert again is not None and again.payload == {"n": 1} and again.delivery_count == 2
    await idle_past(store.redis, queue.queue_key("jobs"), QUEUE_GROUP, 100)
    assert await queue.dequeue("jobs", "w1") is None
    status = await queue.get_queue_status("jobs")
    assert (status.length, status.pending, status.dead_lettered) == (0, 0, 1)


async def test_dequeue_waits_for_work(store: Store) -> None:
    queue = MessageQueue(store)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await queue.enqueue("jobs", msg(9))

    task = asyncio.create_task(later())
    got = await queue.dequeue("jobs", block_ms=3000)
    await task
    assert got is not None and got.payload == {"n": 9}


async def test_queue_bound_and_unknown_ack(store: Store) -> None:
    queue = MessageQueue(store, max_length=2)
    await queue.enqueue("jobs", msg(1))
    await queue.enqueue("jobs", msg(2))
    with pytest.raises(QueueFull) as info:
        await queue.enqueue("jobs", msg(3))
    assert info.value.retryable
    with pytest.raises(NotFound):
        await queue.ack("jobs", "not-dequeued")


# -- contracts -------------------------------------------------------------------------------


def test_message_fields_round_trip_and_refuse_garbage() -> None:
    sent = msg(5, correlation_id="c")
    back = Message.from_fields(sent.to_fields(), stream_id="1-0", delivery_count=2)
    assert back.model_dump(exclude={"stream_id", "delivery_count"}) == sent.model_dump(
        exclude={"stream_id", "delivery_count"}
    )
    assert (back.stream_id, back.delivery_count) == ("1-0", 2)
    assert "stream_id" not in back.to_fields()["message"]
    with pytest.raises(ValueError):
        Message.from_fields({"other": "x"})
    with pytest.raises(ValueError):
        Message(sender="s", trace_id="not-a-traceparent")
    with pytest.raises(ValueError):
        DomainEvent(type="nodot", subject="x")


def test_forbidden_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(Forbidden("no")))
    assert isinstance(error, Forbidden) and str(error) == "no" and error.status_code == 403
