"""A replica's message loop: its agent's inbox and subscribed topics, fed to its handler.

At least once: a message is acknowledged only after the handler returns (in the same
transaction as the agent's durable state, when it keeps one). A message whose replica died
mid-handler is claimed by another replica of the pool after `claim_idle_s`; one that keeps
failing goes to the stream's dead-letter stream after `max_deliveries`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from actors.hub import CommunicationHub
from actors.messages import Message
from actors.observe import message_scope
from actors.state import ReplicaState
from cluster.errors import DafnckError
from cluster.streams import Delivery, GroupReader

log = logging.getLogger(__name__)

#: How often a replica looks for topics its agent was subscribed to since it started.
REFRESH_S = 2.0
#: How long one read waits for new messages.
BLOCK_MS = 1000


class InboxWorker:
    """Reads for one replica (one consumer in its pool's groups) and calls the handler."""

    def __init__(
        self,
        hub: CommunicationHub,
        agent: str,
        replica: str,
        handler: Callable[[Message], Any],
        *,
        state: ReplicaState | None = None,
        get_state: Callable[[], dict[str, Any]] | None = None,
        topics: list[str] | None = None,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
    ) -> None:
        self.hub = hub
        self.topics = topics or []
        self.agent = agent
        self.replica = replica
        self.handler = handler
        self.state = state
        self.get_state = get_state
        self.options = {"claim_idle_ms": claim_idle_ms, "max_deliveries": max_deliveries}
        self.handled = 0
        self.failed = 0
        self._loops: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Start a loop per stream, and one for each topic subscribed later; runs forever."""
        pending = list(self.topics)  # the spec's topics: idempotent, every replica may do it
        while True:
            try:
                while pending:  # the first replica starts before its agent is registered
                    await self.hub.subscribe_to_topic(pending[0], self.agent)
                    pending.pop(0)
                for reader in await self.hub.readers(self.agent, self.replica, **self.options):
                    if reader.stream_key not in self._loops:
                        self._loops[reader.stream_key] = asyncio.create_task(self._consume(reader))
            except DafnckError as exc:
                log.warning("cannot list %s's streams: %s", self.agent, exc)
            await asyncio.sleep(REFRESH_S)

    async def _consume(self, reader: GroupReader) -> None:
        while True:
            try:
                deliveries = await reader.read(count=16, block_ms=BLOCK_MS)
                for delivery in deliveries:
                    await self._handle(reader, delivery)
            except DafnckError as exc:  # the store is down: wait, then read again
                log.warning("reading %s failed: %s", reader.stream_key, exc)
                await asyncio.sleep(1)

    async def _handle(self, reader: GroupReader, delivery: Delivery) -> None:
        keep = asyncio.create_task(self._keep_claimed(reader, delivery.id))
        try:
            message = Message.from_fields(
                delivery.fields, stream_id=delivery.id, delivery_count=delivery.delivery_count
            )
            with message_scope(message, self.agent, self.replica):
                result = self.handler(message)
                if inspect.isawaitable(result):
                    await result
        except Exception:  # not acknowledged: redelivered, then dead-lettered
            self.failed += 1
            log.exception("handler of %s failed on %s", self.agent, delivery.id)
            return
        finally:
            keep.cancel()
        if self.state is not None and self.get_state is not None:
            await self.state.save(
                self.get_state(), acks={reader.stream_key: (reader.group, [delivery.id])}
            )
        else:
            await reader.ack(delivery.id)
        self.handled += 1

    async def _keep_claimed(self, reader: GroupReader, message_id: str) -> None:
        """While the handler runs, reset the message's idle time so that no other replica
        claims it: only a replica that stopped (died) lets it go idle."""
        interval_s = reader.claim_idle_ms / 3000
        client = self.hub.store.async_redis()
        while True:
            await asyncio.sleep(interval_s)
            try:
                await client.xclaim(
                    reader.stream_key, reader.group, self.replica, 0, [message_id], justid=True
                )
            except Exception as exc:  # the next try may work; a lost claim only means a redelivery
                log.warning("could not keep %s claimed: %s", message_id, exc)
