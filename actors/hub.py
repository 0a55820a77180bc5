"""The communication hub, event bus and message queue: plain cores on Redis Streams.

Keys (under `dafnck:<tenant>:`): `inbox:<agent>` (an agent's direct messages, read by its
replicas as group `pool`), `topic:<topic>` (one group per subscribed agent, named after it)
with `topic:<topic>:subscribers`, `subscriptions:<agent>` (its topics), `channel:<id>` and
`channel:<id>:info`, `events:<type>` with `events:types`, `queue:<name>` (group `workers`)
and `<stream>:dead` for dead letters. No Ray here: the actor shells wrap these classes.
`EventBus` (actors.events) and `MessageQueue` (actors.queues) are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, overload

import redis

from actors.events import EventBus, EventHandler
from actors.messages import (
    TOPIC,
    BroadcastResult,
    Channel,
    Message,
    MessagePage,
    MessageResult,
    Subscription,
    new_traceparent,
)
from actors.models import AgentStatus, DiscoveryCriteria
from actors.queues import MessageQueue
from actors.registry import AgentRegistry
from cluster.contracts import STREAM_ID
from cluster.errors import AgentNotFound, Forbidden, NotFound, SpecInvalid
from cluster.quotas import Quotas, admit_member
from cluster.store import Store
from cluster.streams import (
    MAX_BLOCK_MS,
    GroupReader,
    after,
    append,
    append_many,
    async_unavailable_as_error,
    at_ms,
    history,
    last_id,
    stream_replies,
)
from cluster.tracing import current_traceparent

log = logging.getLogger(__name__)

INBOX_GROUP = "pool"
_STREAM_ID = re.compile(STREAM_ID)
_TARGET = re.compile(r"^(inbox|topic|channel):(.+)$")


def _check_topic(topic: str) -> str:
    """Raises: SpecInvalid: the name could collide with derived keys."""
    if not re.match(TOPIC, topic):
        raise SpecInvalid(
            f"topic {topic!r}", [f"use lowercase letters, digits and '._-' ({TOPIC})"]
        )
    return topic


class TopicFeed:
    """New messages on a topic from the moment of subscription, as an async iterator."""

    def __init__(self, store: Store, stream_key: str, start_id: str) -> None:
        self.store = store
        self.stream_key = stream_key
        self.position = start_id
        self._buffer: deque[Message] = deque()
        self._closed = False

    def __aiter__(self) -> TopicFeed:
        return self

    async def __anext__(self) -> Message:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._fill()
        return self._buffer.popleft()

    @async_unavailable_as_error
    async def _fill(self) -> None:
        reply = await self.store.async_redis().xread(
            {self.stream_key: self.position}, count=100, block=MAX_BLOCK_MS
        )
        for _, entries in stream_replies(reply):
            for entry_id, fields in entries:
                self.position = entry_id
                try:
                    self._buffer.append(Message.from_fields(fields, stream_id=entry_id))
                except ValueError as exc:
                    log.warning("skipping entry %s of %s: %s", entry_id, self.stream_key, exc)

    async def aclose(self) -> None:
        """Stop after the messages already buffered."""
        self._closed = True


class CommunicationHub:
    """Direct messages, broadcasts, topics and channels between agents, on Redis Streams.

    Delivery to agents is the replicas' side: each reads its inbox and topics through
    `readers()` (consumer groups: at-least-once, redelivery, dead letters).
    """

    def __init__(
        self,
        store: Store,
        registry: AgentRegistry,
        retention: int = 10_000,
        *,
        known_agents_ttl_s: float = 5.0,
        quotas: Quotas | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        #: The tenant's `topics` quota; topics known to be counted skip the check.
        self.quotas = quotas or Quotas()
        self._topics: set[str] = set()
        #: Entries kept per stream (`MAXLEN ~`): the history limit.
        self.retention = retention
        self._known_ttl_s = known_agents_ttl_s
        self._known: tuple[float, frozenset[str]] = (0.0, frozenset())

    def inbox_key(self, agent: str) -> str:
        return self.store.key("inbox", agent)

    def topic_key(self, topic: str) -> str:
        return self.store.key("topic", _check_topic(topic))

    async def _admit_topic(self, topic: str) -> None:
        """Count a topic the tenant uses. Raises: QuotaExceeded (topics)."""
        if topic not in self._topics:
            await admit_member(self.store, "topics", topic, "topics", self.quotas.topics)
            self._topics.add(topic)

    def channel_key(self, channel_id: str) -> str:
        return self.store.key("channel", channel_id)

    async def send_message(self, message: Message, recipient: str) -> MessageResult:
        """Put a message in an agent's inbox.

        Raises:
            AgentNotFound: no agent of that name is registered.
            Forbidden: the message names another tenant.
            StoreUnavailable: Redis cannot be reached.
        """
        return (await self.send_messages([message], recipient))[0]

    async def send_messages(
        self, messages: Sequence[Message], recipient: str
    ) -> list[MessageResult]:
        """Put many messages in one agent's inbox in one round trip.

        Raises:
            AgentNotFound, Forbidden, StoreUnavailable: as `send_message`.
        """
        await self._require_agents([recipient])
        key = self.inbox_key(recipient)
        stamped = [self._stamp(m, recipient=recipient) for m in messages]
        ids = await append_many(self.store, [(key, m.to_fields()) for m in stamped], self.retention)
        return [_result(m, i, f"inbox:{recipient}") for m, i in zip(stamped, ids, strict=True)]

    async def broadcast_message(
        self, message: Message, recipients: list[str] | None = None, capability: str | None = None
    ) -> BroadcastResult:
        """Copy a message to the named agents and every active agent serving `capability`.

        Raises:
            SpecInvalid: neither recipients nor a capability is given.
            AgentNotFound: a named agent is unknown, or no agent serves the capability.
            Forbidden, StoreUnavailable: as `send_message`.
        """
        if recipients is None and capability is None:
            raise SpecInvalid("broadcast", ["give recipients, a capability, or both"])
        names = list(dict.fromkeys(recipients or []))
        await self._require_agents(names)
        if capability is not None:
            criteria = DiscoveryCriteria(capability=capability, status=AgentStatus.ACTIVE)
            found = await asyncio.to_thread(self.registry.discover_agents, criteria)
            if not found and not names:
                records = await asyncio.to_thread(self.registry.all)
                raise AgentNotFound(
                    capability, sorted({c for r in records for c in r.spec.capabilities})
                )
            names = list(dict.fromkeys([*names, *(r.spec.name for r in found)]))
        copies = [self._stamp(message, recipient=name) for name in names]
        entries = [(self.inbox_key(c.recipient or ""), c.to_fields()) for c in copies]
        ids = await append_many(self.store, entries, self.retention)
        first = copies[0] if copies else self._stamp(message)
        return BroadcastResult(
            message_id=first.id,
            correlation_id=first.correlation_id or first.id,
            delivered=dict(zip(names, ids, strict=True)),
        )

    @overload
    async def subscribe_to_topic(self, topic: str, subscriber: str) -> Subscription: ...
    @overload
    async def subscribe_to_topic(self, topic: str, subscriber: None = None) -> TopicFeed: ...

    async def subscribe_to_topic(
        self, topic: str, subscriber: str | None = None
    ) -> Subscription | TopicFeed:
        """An agent's pool consumes the topic from now on (a Subscription), or, without a
        subscriber, an async iterator over messages published from now on.

        Raises:
            SpecInvalid: the topic name is not allowed.
            AgentNotFound: the subscriber is not a registered agent.
            QuotaExceeded: a new topic past the tenant's `topics` quota.
            StoreUnavailable: Redis cannot be reached.
        """
        key = self.topic_key(topic)
        await self._admit_topic(topic)
        if subscriber is None:
            return TopicFeed(self.store, key, await last_id(self.store, key))
        await self._require_agents([subscriber])
        # Created now, from "$", so nothing published before the replicas start is missed.
        await GroupReader(self.store, key, subscriber, "hub").ensure_group("$")
        await self._subscriptions(topic, subscriber, add=True)
        return Subscription(id=f"{topic}:{subscriber}", topic=topic, subscriber=subscriber)

    async def unsubscribe_from_topic(self, topic: str, subscriber: str) -> None:
        """The agent's pool stops consuming the topic; its consumer group is removed.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        await self._subscriptions(topic, subscriber, add=False)

    @async_unavailable_as_error
    async def topics_of(self, agent: str) -> list[str]:
        """The topics an agent's pool consumes. Raises: StoreUnavailable."""
        return sorted(
            await self.store.async_redis().smembers(self.store.key("subscriptions", agent))
        )

    async def readers(self, agent: str, consumer: str, **options: Any) -> list[GroupReader]:
        """GroupReaders for one replica (`consumer`): its agent's inbox and every topic.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        out = [GroupReader(self.store, self.inbox_key(agent), INBOX_GROUP, consumer, **options)]
        for topic in await self.topics_of(agent):
            out.append(GroupReader(self.store, self.topic_key(topic), agent, consumer, **options))
        return out

    async def publish(self, topic: str, message: Message) -> MessageResult:
        """Publish on a topic: every subscribed pool and every open feed gets it.

        Raises:
            SpecInvalid, Forbidden, QuotaExceeded (a new topic past `topics`), StoreUnavailable.
        """
        self.topic_key(topic)  # a bad name is refused before it is counted
        await self._admit_topic(topic)
        stamped = self._stamp(message, topic=topic)
        entry = await append(self.store, self.topic_key(topic), stamped.to_fields(), self.retention)
        return _result(stamped, entry, f"topic:{topic}")

    @async_unavailable_as_error
    async def create_channel(self, participants: list[str], created_by: str) -> Channel:
        """A channel for the participants (the creator included).

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        members = list(dict.fromkeys([created_by, *participants]))
        channel = Channel(participants=members, created_by=created_by)
        key = self.store.key("channel", channel.id, "info")
        await self.store.async_redis().set(key, channel.model_dump_json())
        return channel

    @async_unavailable_as_error
    async def get_channel(self, channel_id: str) -> Channel:
        """Raises: NotFound, StoreUnavailable."""
        raw = await self.store.async_redis().get(self.store.key("channel", channel_id, "info"))
        if raw is None:
            raise NotFound(f"no channel {channel_id!r} in tenant {self.store.tenant!r}")
        return Channel.model_validate_json(raw)

    async def post_to_channel(self, channel_id: str, message: Message) -> MessageResult:
        """Write to a channel as `message.sender`, who must be a participant.

        Raises:
            NotFound: no such channel.
            Forbidden: the sender is not a participant.
            StoreUnavailable: Redis cannot be reached.
        """
        await self._participant(channel_id, message.sender, "post to")
        stamped = self._stamp(message, channel=channel_id)
        key = self.channel_key(channel_id)
        entry = await append(self.store, key, stamped.to_fields(), self.retention)
        return _result(stamped, entry, f"channel:{channel_id}")

    async def read_channel(
        self, channel_id: str, reader: str, *, after: str | None = None, limit: int = 50
    ) -> MessagePage:
        """A page of a channel's messages, oldest first, for one of its participants.

        Raises:
            NotFound, Forbidden, StoreUnavailable: as `post_to_channel`.
        """
        return await self.get_message_history(
            f"channel:{channel_id}", reader=reader, after=after, limit=limit
        )

    async def get_message_history(
        self,
        target: str,
        *,
        reader: str | None = None,
        after: str | None = None,
        before: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 50,
        newest_first: bool = False,
    ) -> MessagePage:
        """A page of `inbox:<agent>`, `topic:<name>` or `channel:<id>` (which needs `reader`).

        `after`/`before` are exclusive cursors (stream ids, e.g. a page's `next_cursor`);
        `since_ms` is inclusive and `until_ms` exclusive, in ms since the epoch.

        Raises:
            SpecInvalid: the target or the range is malformed.
            NotFound, Forbidden: for a channel, as `read_channel`.
            StoreUnavailable: Redis cannot be reached.
        """
        start, end, problems = _bounds(after, before, since_ms, until_ms)
        match = _TARGET.match(target)
        if not match:
            problems.append(
                f"target {target!r} is not 'inbox:<agent>', 'topic:<name>' or 'channel:<id>'"
            )
        if not 1 <= limit <= 1000:
            problems.append(f"limit must be within 1..1000, not {limit!r}")
        if problems or match is None:
            raise SpecInvalid("history query", problems)
        kind, name = match.groups()
        if kind == "channel":
            await self._participant(name, reader, "read")
        key = self.topic_key(name) if kind == "topic" else self.store.key(kind, name)
        page = await history(
            self.store, key, start=start, end=end, count=limit, reverse=newest_first
        )
        return MessagePage(
            messages=[Message.from_fields(f, stream_id=i) for i, f in page.entries],
            next_cursor=page.next,
        )

    def _stamp(self, message: Message, **where: str) -> Message:
        tenant = self.store.tenant
        if message.tenant and message.tenant != tenant:
            raise Forbidden(
                f"message {message.id!r} belongs to tenant {message.tenant!r}, not {tenant!r}"
            )
        return message.model_copy(
            update={
                "tenant": tenant,
                "correlation_id": message.correlation_id or message.id,
                # The sender's span, so the handler's span joins its trace.
                "trace_id": message.trace_id or current_traceparent() or new_traceparent(),
                **where,
            }
        )

    async def _agent_names(self, refresh: bool = False) -> frozenset[str]:
        """Registered agent names, cached for a few seconds: sending must stay one XADD."""
        at, names = self._known
        if refresh or time.monotonic() - at > self._known_ttl_s:
            records = await asyncio.to_thread(self.registry.all)
            names = frozenset(r.spec.name for r in records)
            self._known = (time.monotonic(), names)
        return names

    async def _require_agents(self, names: list[str]) -> None:
        known = await self._agent_names()
        if any(n not in known for n in names):
            known = await self._agent_names(refresh=True)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise AgentNotFound(", ".join(unknown), sorted(known))

    async def _participant(self, channel_id: str, who: str | None, verb: str) -> Channel:
        channel = await self.get_channel(channel_id)
        if who not in channel.participants:
            raise Forbidden(
                f"{who!r} may not {verb} channel {channel_id!r}: only its participants "
                f"{', '.join(map(repr, channel.participants))} may"
            )
        return channel

    @async_unavailable_as_error
    async def _subscriptions(self, topic: str, agent: str, *, add: bool) -> None:
        client = self.store.async_redis()
        pipe = client.pipeline(transaction=True)
        members = self.store.key("topic", _check_topic(topic), "subscribers")
        mine = self.store.key("subscriptions", agent)
        if add:
            pipe.sadd(members, agent).sadd(mine, topic)
        else:
            pipe.srem(members, agent).srem(mine, topic)
        await pipe.execute()
        if not add:
            with contextlib.suppress(redis.ResponseError):  # no stream: nothing to remove
                await client.xgroup_destroy(self.topic_key(topic), agent)


def _result(message: Message, stream_id: str, target: str) -> MessageResult:
    return MessageResult(
        message_id=message.id,
        stream_id=stream_id,
        target=target,
        correlation_id=message.correlation_id or message.id,
        trace_id=message.trace_id or "",
    )


def _bounds(
    after_id: str | None, before_id: str | None, since_ms: int | None, until_ms: int | None
) -> tuple[str, str, list[str]]:
    """XRANGE bounds from cursors or times; every conflict reported together."""
    problems = [
        f"give {a} or {b}, not both"
        for a, b, x, y in (
            ("after", "since_ms", after_id, since_ms),
            ("before", "until_ms", before_id, until_ms),
        )
        if x is not None and y is not None
    ]
    problems += [
        f"cursor {c!r} is not a stream id like '1700000000000-0'"
        for c in (after_id, before_id)
        if c is not None and not _STREAM_ID.match(c)
    ]
    start = after(after_id) if after_id else at_ms(since_ms) if since_ms is not None else "-"
    end = after(before_id) if before_id else after(at_ms(until_ms)) if until_ms is not None else "+"
    return start, end, problems


__all__ = [
    "INBOX_GROUP",
    "CommunicationHub",
    "EventBus",
    "EventHandler",
    "Forbidden",
    "MessageQueue",
    "TopicFeed",
]
