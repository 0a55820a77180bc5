"""The event bus: domain events (agent, execution, step changes) on one stream per type.

Subscribers are fan-out readers (plain XREAD, no consumer group): each sees every event
published after it subscribed. A pattern such as `execution.*` follows the types listed
in `events:types`, so streams of types first published later are picked up too.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors.messages import DomainEvent, Subscription
from cluster.errors import StoreUnavailable
from cluster.store import Store
from cluster.streams import (
    MAX_BLOCK_MS,
    async_unavailable_as_error,
    cancel_and_wait,
    last_id,
    stream_replies,
    unreachable_as_error,
)

log = logging.getLogger(__name__)

EventHandler = Callable[[DomainEvent], Awaitable[None]]
_GLOB = set("*?[")


class EventBus:
    """Publish domain events and run async handlers for the types (or patterns) asked for."""

    def __init__(self, store: Store, retention: int = 10_000, block_ms: int = MAX_BLOCK_MS) -> None:
        self.store = store
        self.retention = retention
        #: How long a subscriber waits per read; also how soon a pattern sees a new type.
        self.block_ms = block_ms
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def stream_key(self, event_type: str) -> str:
        return self.store.key("events", event_type)

    @async_unavailable_as_error
    async def publish(self, event: DomainEvent) -> str:
        """Append the event to its type's stream; returns its stream id.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        if not event.tenant:
            event = event.model_copy(update={"tenant": self.store.tenant})
        pipe = self.store.async_redis().pipeline(transaction=True)
        pipe.xadd(self.stream_key(event.type), event.to_fields(), maxlen=self.retention)
        pipe.sadd(self.store.key("events", "types"), event.type)
        entry_id, _ = await pipe.execute()
        return str(entry_id)

    def stage(self, pipe: Any, event: DomainEvent) -> None:
        """Add `publish`'s commands to a pipeline, so an event lands with the change it tells of."""
        pipe.xadd(self.stream_key(event.type), event.to_fields(), maxlen=self.retention)
        pipe.sadd(self.store.key("events", "types"), event.type)

    def mirror_execution_event(self, pipe: Any, event: Any) -> None:
        """`ExecutionStore`'s mirror: every execution and step event also goes on the bus."""
        self.stage(pipe, DomainEvent(
            type=event.type, subject=event.step or event.execution, at=event.at,
            data={"execution": event.execution, **event.data}, tenant=self.store.tenant,
        ))  # fmt: skip

    async def subscribe(self, pattern: str, handler: EventHandler) -> Subscription:
        """Call `handler` for each event of the type (or glob, e.g. `step.*`) from now on.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        positions = {key: await last_id(self.store, key) for key in await self._streams(pattern)}
        subscription = Subscription(
            topic=pattern, subscriber=getattr(handler, "__qualname__", None)
        )
        task = asyncio.create_task(
            self._pump(pattern, handler, positions), name=f"events:{pattern}:{subscription.id}"
        )
        self._tasks[subscription.id] = task
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop the subscription's handler; unknown subscriptions are ignored."""
        task = self._tasks.pop(subscription.id, None)
        if task is not None:
            await cancel_and_wait(task)

    async def close(self) -> None:
        """Stop every subscription of this bus."""
        for subscription_id in list(self._tasks):
            await self.unsubscribe(Subscription(id=subscription_id, topic=""))

    async def _streams(self, pattern: str) -> list[str]:
        if not _GLOB & set(pattern):
            return [self.stream_key(pattern)]
        with unreachable_as_error(self.store):
            types = await self.store.async_redis().smembers(self.store.key("events", "types"))
        return [self.stream_key(t) for t in sorted(types) if fnmatch.fnmatchcase(t, pattern)]

    async def _pump(self, pattern: str, handler: EventHandler, positions: dict[str, str]) -> None:
        """Read and hand over events until cancelled; outages are waited out, not fatal."""
        backoff_s = 0.1
        while True:
            try:
                for key in await self._streams(pattern):
                    # A stream that appeared after subscribing holds only newer events.
                    positions.setdefault(key, "0-0")
                await self._read_once(handler, positions)
                backoff_s = 0.1
            except StoreUnavailable as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError from None  # the outage is our own cancel
                log.warning("event subscription %r waits for Redis: %s", pattern, exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _read_once(self, handler: EventHandler, positions: dict[str, str]) -> None:
        if not positions:  # a pattern no published type matches yet
            await asyncio.sleep(self.block_ms / 1000)
            return
        with unreachable_as_error(self.store):
            reply = await self.store.async_redis().xread(positions, count=100, block=self.block_ms)
        for stream, entries in stream_replies(reply):
            for entry_id, fields in entries:
                positions[stream] = entry_id
                await _call(handler, fields, stream, entry_id)


async def _call(handler: EventHandler, fields: dict[str, str], stream: str, entry_id: str) -> None:
    """One handler call; a failing handler is logged and does not stop the subscription."""
    try:
        await handler(DomainEvent.from_fields(fields))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("event handler failed on %s %s", stream, entry_id, extra={"stream": stream})


__all__ = ["EventBus", "EventHandler"]
