"""Work queues on Redis Streams: one stream per queue, consumed by the group `workers`.

At-least-once: a dequeued message must be acknowledged with `ack`; one left unacknowledged
for `visibility_timeout_ms` is handed to the next consumer that asks, and after
`max_deliveries` it moves to `queue:<name>:dead`. Acknowledged entries are deleted, so a
queue's length is its backlog and `max_length` bounds it without trimming live work.
"""

from __future__ import annotations

import re

import redis

from actors.messages import TOPIC, Message, MessageResult, QueueStatus, new_traceparent
from cluster.contracts import STREAM_ID
from cluster.errors import NotFound, QueueFull, SpecInvalid
from cluster.store import Store
from cluster.streams import GroupReader, after, async_unavailable_as_error
from cluster.tracing import current_traceparent

QUEUE_GROUP = "workers"
_STREAM_ID = re.compile(STREAM_ID)
_MAX_IN_FLIGHT = 10_000


class MessageQueue:
    """Named queues: `enqueue`, `dequeue` (then `ack`), `peek` and `get_queue_status`."""

    def __init__(
        self,
        store: Store,
        *,
        visibility_timeout_ms: int = 30_000,
        max_deliveries: int = 5,
        max_length: int = 100_000,
    ) -> None:
        self.store = store
        self.visibility_timeout_ms = visibility_timeout_ms
        self.max_deliveries = max_deliveries
        self.max_length = max_length
        self._readers: dict[tuple[str, str], GroupReader] = {}
        #: (queue, message id) -> stream id of what this process dequeued and not acked.
        self._in_flight: dict[tuple[str, str], str] = {}
        self._ready: set[str] = set()

    def queue_key(self, queue_name: str) -> str:
        """Raises: SpecInvalid: the name is not allowed."""
        if not re.match(TOPIC, queue_name):
            raise SpecInvalid(
                f"queue {queue_name!r}", [f"use lowercase letters, digits and '._-' ({TOPIC})"]
            )
        return self.store.key("queue", queue_name)

    @async_unavailable_as_error
    async def enqueue(self, queue_name: str, message: Message) -> MessageResult:
        """Add a message at the tail of the queue.

        Raises:
            QueueFull: the queue holds `max_length` messages already (retryable).
            SpecInvalid: the queue name is not allowed.
            StoreUnavailable: Redis cannot be reached.
        """
        key = self.queue_key(queue_name)
        if queue_name not in self._ready:  # so `peek` and the status see the group at once
            await self._reader(queue_name, "default").ensure_group("0")
            self._ready.add(queue_name)
        client = self.store.async_redis()
        # Checked, then added: under concurrent producers the bound is approximate.
        if await client.xlen(key) >= self.max_length:
            raise QueueFull(f"queue {queue_name!r} holds {self.max_length} messages; retry later")
        stamped = message.model_copy(
            update={
                "tenant": message.tenant or self.store.tenant,
                "correlation_id": message.correlation_id or message.id,
                "trace_id": message.trace_id or current_traceparent() or new_traceparent(),
            }
        )
        entry_id = str(await client.xadd(key, stamped.to_fields()))
        return MessageResult(
            message_id=stamped.id,
            stream_id=entry_id,
            target=f"queue:{queue_name}",
            correlation_id=stamped.correlation_id or stamped.id,
            trace_id=stamped.trace_id or "",
        )

    async def dequeue(
        self, queue_name: str, consumer: str = "default", block_ms: int = 0
    ) -> Message | None:
        """The next message for `consumer` (a stale unacknowledged one first), or None.

        Waits up to `block_ms` (0: not at all). Acknowledge it with `ack` once handled.

        Raises:
            SpecInvalid: the queue name is not allowed.
            StoreUnavailable: Redis cannot be reached.
        """
        reader = self._reader(queue_name, consumer)
        for delivery in await reader.read(count=1, block_ms=block_ms):
            try:
                message = Message.from_fields(
                    delivery.fields, stream_id=delivery.id, delivery_count=delivery.delivery_count
                )
            except ValueError as exc:
                await reader.dead_letter(delivery, f"not a message: {exc}")
                return None
            if len(self._in_flight) >= _MAX_IN_FLIGHT:  # forget the oldest, never grow unbounded
                self._in_flight.pop(next(iter(self._in_flight)))
            self._in_flight[(queue_name, message.id)] = delivery.id
            return message
        return None

    async def ack(self, queue_name: str, message_id: str) -> bool:
        """Mark a dequeued message done (by its id or stream id); False if it was not pending.

        Raises:
            NotFound: a message id this process did not dequeue (ack by stream id instead).
            StoreUnavailable: Redis cannot be reached.
        """
        entry_id = self._in_flight.pop((queue_name, message_id), None)
        if entry_id is None and _STREAM_ID.match(message_id):
            entry_id = message_id
        if entry_id is None:
            raise NotFound(
                f"message {message_id!r} was not dequeued from {queue_name!r} by this process; "
                "acknowledge it by its stream_id"
            )
        return bool(await self._reader(queue_name, "default").ack(entry_id))

    @async_unavailable_as_error
    async def peek(self, queue_name: str) -> Message | None:
        """The oldest message not yet delivered to any consumer, left in place.

        Raises:
            SpecInvalid, StoreUnavailable.
        """
        key = self.queue_key(queue_name)
        group = await self._group_info(key)
        start = after(str(group["last-delivered-id"])) if group else "-"
        rows = await self.store.async_redis().xrange(key, min=start, count=1)
        return Message.from_fields(rows[0][1], stream_id=rows[0][0]) if rows else None

    @async_unavailable_as_error
    async def get_queue_status(self, queue_name: str) -> QueueStatus:
        """Length, pending (delivered, unacknowledged), consumers and dead letters.

        Raises:
            SpecInvalid, StoreUnavailable.
        """
        key = self.queue_key(queue_name)
        client = self.store.async_redis()
        length, dead = (
            await client.pipeline(transaction=False).xlen(key).xlen(f"{key}:dead").execute()
        )
        group = await self._group_info(key)
        pending = int(str(group["pending"])) if group else 0
        return QueueStatus(
            name=queue_name,
            length=length,
            pending=pending,
            consumers=int(str(group["consumers"])) if group else 0,
            dead_lettered=dead,
            # Acknowledged and dead-lettered entries are deleted: the rest is waiting.
            waiting=max(0, length - pending),
        )

    async def _group_info(self, key: str) -> dict[str, object] | None:
        try:
            groups = await self.store.async_redis().xinfo_groups(key)
        except redis.ResponseError:  # no such stream yet
            return None
        return next((g for g in groups if g["name"] == QUEUE_GROUP), None)

    def _reader(self, queue_name: str, consumer: str) -> GroupReader:
        reader = self._readers.get((queue_name, consumer))
        if reader is None:
            reader = GroupReader(
                self.store,
                self.queue_key(queue_name),
                QUEUE_GROUP,
                consumer,
                claim_idle_ms=self.visibility_timeout_ms,
                max_deliveries=self.max_deliveries,
                delete_on_ack=True,
            )
            self._readers[(queue_name, consumer)] = reader
        return reader


__all__ = ["QUEUE_GROUP", "MessageQueue"]
