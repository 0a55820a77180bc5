"""Agents take messages on Ray: at least once, in order, from their inbox and topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import redis

from actors.client import Client
from actors.hub import INBOX_GROUP, CommunicationHub
from actors.messages import Message
from actors.models import AgentSpec
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def listener(client: Client, replicas: int = 1, **messaging: Any) -> AgentSpec:
    return AgentSpec(
        name="listener",
        capabilities=["listen.pid"],
        entrypoint="tests.fixtures.agents:Listener",
        config={"redis_url": client.store.url, "key": client.store.key("seen")},
        replicas={"min": replicas, "max": 4},
        messaging=messaging,
    )


@pytest.fixture
def hub(client: Client) -> Iterator[CommunicationHub]:
    yield CommunicationHub(client.store, client.registry)


def send(hub: CommunicationHub, *messages: Message, to: str = "listener") -> None:
    async def go() -> None:
        for message in messages:
            await hub.send_message(message, to)

    asyncio.run(go())


def seen(client: Client, suffix: str = "") -> list[str]:
    raw: Any = redis.Redis.from_url(client.store.url, decode_responses=True)
    return list(raw.lrange(client.store.key("seen") + suffix, 0, -1))


def pending(client: Client, stream: str, group: str) -> int | None:
    """How many entries of `stream` the consumer group holds unacknowledged (None: no group)."""
    raw: Any = redis.Redis.from_url(client.store.url, decode_responses=True)
    groups = {g["name"]: g for g in raw.xinfo_groups(stream)} if raw.exists(stream) else {}
    return int(groups[group]["pending"]) if group in groups else None


def test_messages_are_handled_in_order(client: Client, hub: CommunicationHub) -> None:
    client.agents.apply(listener(client))
    messages = [Message(sender="test", payload={"n": i}) for i in range(20)]
    send(hub, *messages)
    wait_until(lambda: len(seen(client)) == 20, 30, "20 messages handled")
    assert seen(client) == [m.id for m in messages]


def test_a_replica_killed_mid_handler_hands_its_message_to_another(
    client: Client, hub: CommunicationHub
) -> None:
    client.agents.apply(listener(client, replicas=2, claim_idle_s=1.0))
    slow = Message(sender="test", payload={"seconds": 3})
    send(hub, slow)
    started = wait_until(lambda: seen(client, ":started"), 30, "the handler to start")
    pid = int(started[0].rsplit(":", 1)[1])
    replicas = client.health()["pools"]["listener@1.0.0"]["replicas"]
    (victim,) = [name for name, report in replicas.items() if report.get("pid") == pid]
    ray.kill(ray.get_actor(victim, namespace="dafnck"), no_restart=True)
    wait_until(lambda: seen(client) == [slow.id], 30, "the message handled by another replica")
    # Acknowledged, so never delivered again: what was seen so far is all there will be.
    wait_until(lambda: pending(client, hub.inbox_key("listener"), INBOX_GROUP) == 0, 30,
               "the message acknowledged")  # fmt: skip
    assert len(seen(client, ":started")) == 2  # delivered twice (at least once) ...
    assert seen(client) == [slow.id]  # ... completed and acknowledged once


def test_topic_subscribers_receive_published_messages(
    client: Client, hub: CommunicationHub
) -> None:
    client.agents.apply(listener(client, topics=["news"]))
    client.tasks.run("listen.pid")  # the replica is up and has subscribed
    wait_until(lambda: "news" in asyncio.run(hub.topics_of("listener")), 10, "the subscription")
    note = Message(sender="test", payload={"headline": "hello"})
    asyncio.run(hub.publish("news", note))
    wait_until(lambda: seen(client) == [note.id], 30, "the topic message handled")


def test_a_topic_trigger_fires_once_per_message_across_a_supervisor_restart(
    client: Client, hub: CommunicationHub
) -> None:
    from actors.names import supervisor_name
    from workflows.spec import WorkflowSpec

    client.agents.apply(
        AgentSpec(
            name="stepper", capabilities=["test.step"], entrypoint="tests.fixtures.agents:step"
        )
    )
    client.workflows.define(WorkflowSpec.model_validate({
        "name": "on-news", "inputs": {"n": {"type": "integer"}},
        "steps": [{"id": "a", "uses": "test.step", "with": {"value": "${{ inputs.n }}"}}],
        "triggers": [{"topic": "news", "inputs": {"n": "${{ message.payload.n }}"}}],
    }))  # fmt: skip
    news, group = hub.topic_key("news"), "trigger.on-news"
    wait_until(lambda: pending(client, news, group) is not None, 30,
               "the supervisor's tick to create the trigger's consumer group")  # fmt: skip
    asyncio.run(hub.publish("news", Message(sender="test", payload={"n": 1})))
    wait_until(lambda: len(client.workflows.ls()) == 1, 20, "the first triggered execution")
    ray.kill(
        ray.get_actor(supervisor_name(client.settings.tenant), namespace="dafnck"), no_restart=False
    )
    asyncio.run(hub.publish("news", Message(sender="test", payload={"n": 2})))
    wait_until(lambda: len(client.workflows.ls()) == 2, 30, "the second triggered execution")
    # Both messages acknowledged: no redelivery can start a third execution.
    wait_until(lambda: pending(client, news, group) == 0, 90, "the messages acknowledged")
    executions = client.workflows.ls()
    assert sorted(e.inputs["n"] for e in executions) == [1, 2]
    for execution in executions:
        assert client.workflows.wait(execution.id, 30).outputs is not None


def test_the_event_bus_carries_agent_execution_and_step_events(client: Client) -> None:
    from actors.events import EventBus
    from actors.messages import DomainEvent
    from workflows.spec import WorkflowSpec

    async def scenario() -> list[DomainEvent]:
        bus = EventBus(client.store)
        got: list[DomainEvent] = []

        async def collect(event: DomainEvent) -> None:
            got.append(event)

        subs = [await bus.subscribe(p, collect) for p in ("agent.*", "execution.*", "step.*")]
        await asyncio.to_thread(
            client.agents.apply,
            AgentSpec(
                name="stepper", capabilities=["test.step"], entrypoint="tests.fixtures.agents:step"
            ),
        )
        await asyncio.to_thread(client.workflows.define, WorkflowSpec.model_validate(
            {"name": "one", "steps": [{"id": "a", "uses": "test.step"}]}))  # fmt: skip
        done = await asyncio.to_thread(client.workflows.run, "one", None, timeout_s=30)
        deadline = time.monotonic() + 10
        while not any(e.type == "execution.succeeded" for e in got) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for sub in subs:
            await bus.unsubscribe(sub)
        await bus.close()
        assert done.outputs == {}
        return got

    kinds = {e.type for e in asyncio.run(scenario())}
    assert {
        "agent.created",
        "execution.started",
        "step.started",
        "step.succeeded",
        "execution.succeeded",
    } <= kinds
