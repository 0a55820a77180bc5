"""`dafnck bench` suite `hub`: messages sent through the hub and delivered to a handler,
against raw redis-py streams doing the same work with the same batching, in one run.

Every side sends 1 KB payloads `batch` per round trip, reads them back through a consumer
group `batch` at a time, hands each to a handler and acknowledges the batch. The hub goes
through `CommunicationHub.send_messages` (stamped, validated `Message`s as JSON) and a
`GroupReader`. The baseline is redis.asyncio XADD (pipelined), XREADGROUP and XACK on plain
field dicts: the client an async agent replica can use without blocking its event loop.
The blocking client is measured too and reported in a second row. Rounds alternate the
order of the sides; each side reports its median.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from actors.hub import INBOX_GROUP, CommunicationHub
from actors.messages import Message
from actors.models import AgentRecord, AgentSpec
from actors.registry import AgentRegistry
from cluster.store import Store
from cluster.streams import GroupReader

AGENT = "bench-hub"
PAYLOAD = "x" * 1024


@dataclass(frozen=True)
class HubPlan:
    """How much to measure: rounds per side, messages per round, messages per pipeline."""

    rounds: int
    messages: int
    batch: int = 100


FULL = HubPlan(rounds=9, messages=10_000)
QUICK = HubPlan(rounds=2, messages=1_000)


def measure_hub(store: Store, quick: bool = False) -> list[dict[str, Any]]:
    """Hub throughput (messages/s sent and delivered) next to raw redis-py streams.

    Runs its own event loop; registers a throwaway agent and removes it and its keys after.

    Raises:
        StoreUnavailable: Redis cannot be reached.
    """
    plan = QUICK if quick else FULL
    registry = AgentRegistry(store)
    registry.register_agent(
        AgentRecord(spec=AgentSpec(name=AGENT, capabilities=["bench.hub"], entrypoint="m:f"))
    )
    try:
        ours, raw, raw_blocking = asyncio.run(_measure(store, registry, plan))
    finally:
        registry.deregister_agent(f"{AGENT}@1.0.0")
        store.redis.delete(store.key("inbox", AGENT), store.key("bench", "raw"))
    return [
        _row("hub_throughput", ours, raw),
        _row("hub_throughput_vs_blocking_client", ours, raw_blocking),
    ]


def _row(name: str, value: float, baseline: float) -> dict[str, Any]:
    return {
        "suite": "hub",
        "name": name,
        "value": round(value, 1),
        "unit": "msg/s",
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, 4) if baseline else None,
    }


async def _measure(
    store: Store, registry: AgentRegistry, plan: HubPlan
) -> tuple[float, float, float]:
    hub = CommunicationHub(store, registry, retention=plan.messages * 2)
    samples: list[list[float]] = [[], [], []]

    async def hub_side() -> float:
        return await _hub_round(hub, plan)

    async def raw_side() -> float:
        return await _raw_round(store, plan)

    async def blocking_side() -> float:
        return _blocking_round(store, plan)  # blocking is fine: nothing else runs

    sides: list[Callable[[], Awaitable[float]]] = [hub_side, raw_side, blocking_side]
    try:
        for side in sides:  # warm-up: connections, pydantic's validators, the script
            await side()
        for i in range(plan.rounds):
            order = list(enumerate(sides))
            for k, side in order if i % 2 == 0 else order[::-1]:
                samples[k].append(await side())
    finally:
        await store.async_redis().aclose()
    ours, raw, blocking = (statistics.median(s) for s in samples)
    return ours, raw, blocking


async def _hub_round(hub: CommunicationHub, plan: HubPlan) -> float:
    """Messages/s through `send_messages` and a GroupReader to an async handler, acked."""
    key = hub.inbox_key(AGENT)
    hub.store.redis.delete(key)
    reader = GroupReader(hub.store, key, INBOX_GROUP, "bench-replica")
    await reader.ensure_group("0")
    handled = 0

    async def handler(message: Message) -> None:
        nonlocal handled
        handled += len(message.payload["data"]) > 0

    started = time.perf_counter()
    for first in range(0, plan.messages, plan.batch):
        batch = [
            Message(sender="bench", type="bench", payload={"i": i, "data": PAYLOAD})
            for i in range(first, min(first + plan.batch, plan.messages))
        ]
        await hub.send_messages(batch, AGENT)
        deliveries = await reader.read(count=plan.batch)
        for delivery in deliveries:
            await handler(Message.from_fields(delivery.fields, stream_id=delivery.id))
        await reader.ack(*[d.id for d in deliveries])
    elapsed = time.perf_counter() - started
    assert handled == plan.messages, f"hub delivered {handled} of {plan.messages}"
    return plan.messages / elapsed


async def _raw_round(store: Store, plan: HubPlan) -> float:
    """The same with plain redis.asyncio: pipelined XADD, XREADGROUP, XACK, a plain handler."""
    client, key = store.async_redis(), store.key("bench", "raw")
    await client.delete(key)
    await client.xgroup_create(key, "raw", "0", mkstream=True)
    handled = 0

    async def handler(fields: dict[str, str]) -> None:
        nonlocal handled
        handled += len(fields["data"]) > 0

    started = time.perf_counter()
    for first in range(0, plan.messages, plan.batch):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + plan.batch, plan.messages)):
            pipe.xadd(key, {"i": str(i), "data": PAYLOAD}, maxlen=plan.messages * 2)
        await pipe.execute()
        reply = await client.xreadgroup("raw", "raw-replica", {key: ">"}, count=plan.batch)
        ids = []
        for _, entries in reply:
            for entry_id, fields in entries:
                await handler(fields)
                ids.append(entry_id)
        await client.xack(key, "raw", *ids)
    elapsed = time.perf_counter() - started
    assert handled == plan.messages, f"raw delivered {handled} of {plan.messages}"
    return plan.messages / elapsed


def _blocking_round(store: Store, plan: HubPlan) -> float:
    """The same with the blocking redis-py client."""
    client, key = store.redis, store.key("bench", "raw")
    client.delete(key)
    client.xgroup_create(key, "raw", "0", mkstream=True)
    handled = 0

    def handler(fields: dict[str, str]) -> None:
        nonlocal handled
        handled += len(fields["data"]) > 0

    started = time.perf_counter()
    for first in range(0, plan.messages, plan.batch):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + plan.batch, plan.messages)):
            pipe.xadd(key, {"i": str(i), "data": PAYLOAD}, maxlen=plan.messages * 2)
        pipe.execute()
        reply = client.xreadgroup("raw", "raw-replica", {key: ">"}, count=plan.batch)
        ids = []
        for _, entries in reply:
            for entry_id, fields in entries:
                handler(fields)
                ids.append(entry_id)
        client.xack(key, "raw", *ids)
    elapsed = time.perf_counter() - started
    assert handled == plan.messages, f"raw delivered {handled} of {plan.messages}"
    return plan.messages / elapsed


__all__ = ["FULL", "QUICK", "HubPlan", "measure_hub"]
