"""Contracts of the messaging layer: messages, channels, subscriptions, queue status and
domain events. Streams keep each one as JSON in a single field, never as a pickle."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import pydantic_core
from pydantic import Field

from actors.models import NAME, Record, new_id
from cluster.contracts import TOPIC

#: `agent.created`, `execution.step.failed`: at least one dot, so `events:types` is free.
EVENT_TYPE = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
#: W3C trace context `traceparent`: version-traceid-parentid-flags.
TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
MESSAGE_FIELD = "message"
EVENT_FIELD = "event"
#: Set on a message read from a stream; never written back.
_RECEIVED = {"stream_id", "delivery_count"}


def new_traceparent() -> str:
    """A fresh W3C `traceparent` (sampled) for a message that arrives without one.

    Trace ids need to be unique, not secret: `random` is five times cheaper than `secrets`.
    """
    return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64) or 1:016x}-01"


def _field(fields: Mapping[str, str], name: str, what: str) -> str:
    try:
        return fields[name]
    except KeyError:
        raise ValueError(f"stream entry has no {name!r} field; it is not a {what}") from None


class Message(Record):
    """One message: to an agent's inbox, a topic or a channel. The hub stamps the rest."""

    id: str = Field(default_factory=new_id)
    sender: str = Field(min_length=1, max_length=200)
    recipient: str | None = Field(default=None, pattern=NAME)
    topic: str | None = Field(default=None, pattern=TOPIC)
    channel: str | None = None
    tenant: str = ""
    type: str = Field(default="message", min_length=1, max_length=200)
    payload: dict[str, Any] = {}
    #: Ties replies to the request; the hub sets it to the message's own id when absent.
    correlation_id: str | None = None
    trace_id: str | None = Field(default=None, pattern=TRACEPARENT)
    created_at: float = Field(default_factory=time.time)
    #: Where it sits in its stream (a history cursor); set on reading only.
    stream_id: str | None = None
    #: 1 on first delivery, more when redelivered after its reader died; set on reading only.
    delivery_count: int = 0

    def to_fields(self) -> dict[str, str]:
        """The stream entry: the message as JSON in one field."""
        return {MESSAGE_FIELD: self.model_dump_json(exclude=_RECEIVED)}

    @classmethod
    def from_fields(
        cls, fields: Mapping[str, str], *, stream_id: str | None = None, delivery_count: int = 0
    ) -> Message:
        """Rebuild a message from its stream entry.

        Raises:
            ValueError: the entry is not a message (pydantic's ValidationError is one).
        """
        raw = _field(fields, MESSAGE_FIELD, "message")
        if stream_id is None and not delivery_count:
            return cls.model_validate_json(raw)
        # One validation with the reception fields added, rather than a validation and a copy.
        data = pydantic_core.from_json(raw)  # raises ValueError on bad JSON
        if not isinstance(data, dict):
            raise ValueError(f"stream entry {stream_id} holds {type(data).__name__}, not a message")
        data.update(stream_id=stream_id, delivery_count=delivery_count)
        return cls.model_validate(data)


class MessageResult(Record):
    """Where a message went: its stream and position, and the ids it carries."""

    message_id: str
    stream_id: str
    #: `inbox:<agent>`, `topic:<name>`, `channel:<id>` or `queue:<name>`.
    target: str
    correlation_id: str
    trace_id: str


class BroadcastResult(Record):
    """One message copied to many inboxes: agent name -> stream id of its copy."""

    message_id: str
    correlation_id: str
    delivered: dict[str, str] = {}

    @property
    def count(self) -> int:
        return len(self.delivered)


class MessagePage(Record):
    """A page of history; pass `next_cursor` as `after` (or `before` when newest first)."""

    messages: list[Message] = []
    next_cursor: str | None = None


class Channel(Record):
    """A conversation only its participants may read or write."""

    id: str = Field(default_factory=new_id)
    participants: list[str] = Field(min_length=1)
    created_by: str
    created_at: float = Field(default_factory=time.time)


class Subscription(Record):
    """A standing interest in a topic (or event type pattern) by an agent or a handler."""

    id: str = Field(default_factory=new_id)
    topic: str
    subscriber: str | None = None


class QueueStatus(Record):
    name: str
    #: Entries in the queue: waiting plus delivered and not yet acknowledged.
    length: int = 0
    pending: int = 0
    consumers: int = 0
    dead_lettered: int = 0
    #: Not yet delivered to anyone; None where the server does not report it.
    waiting: int | None = None


class DomainEvent(Record):
    """Something that happened to an agent, execution or step, for dashboards and streams."""

    id: str = Field(default_factory=new_id)
    type: str = Field(pattern=EVENT_TYPE)
    #: The id of the agent, execution or step the event is about.
    subject: str
    data: dict[str, Any] = {}
    at: float = Field(default_factory=time.time)
    tenant: str = ""
    trace_id: str | None = Field(default=None, pattern=TRACEPARENT)

    def to_fields(self) -> dict[str, str]:
        return {EVENT_FIELD: self.model_dump_json()}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> DomainEvent:
        """Raises: ValueError: the entry is not an event."""
        return cls.model_validate_json(_field(fields, EVENT_FIELD, "domain event"))


__all__ = [
    "EVENT_TYPE",
    "TOPIC",
    "BroadcastResult",
    "Channel",
    "DomainEvent",
    "Message",
    "MessagePage",
    "MessageResult",
    "QueueStatus",
    "Subscription",
    "new_traceparent",
]
