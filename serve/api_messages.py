"""Messages: to an agent's inbox, broadcast to many, published on a topic, or written in a
channel; and their history, paged by stream id.

The sender is always the caller's subject (a body cannot name another sender), and so is
the participant who reads or writes a channel: only its participants may (403 otherwise).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from actors.messages import TOPIC, TRACEPARENT, Message
from actors.models import NAME
from cluster.auth.models import Action
from serve.deps import Caller, allowed
from serve.patterns import ID, MAX_STREAM_MS, STREAM_ID

router = APIRouter(tags=["messages"])

#: `inbox:<agent>`, `topic:<name>` or `channel:<id>`: the name becomes part of a key.
TARGET = "^(inbox:{}|topic:{}|channel:{})$".format(*(p.strip("^$") for p in (NAME, TOPIC, ID)))
AgentName = Path(pattern=NAME, description="The recipient agent's name")
TopicName = Path(pattern=TOPIC)
ChannelId = Path(min_length=1, max_length=64, pattern=ID)


class MessageBody(BaseModel):
    """What a message carries; the hub stamps ids, tenant and trace context."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(default="message", min_length=1, max_length=200)
    payload: dict[str, Any] = {}
    correlation_id: str | None = Field(default=None, max_length=200)
    trace_id: str | None = Field(default=None, pattern=TRACEPARENT)

    def message(self, sender: str) -> Message:
        return Message(sender=sender, **self.model_dump())


class SendRequest(MessageBody):
    recipient: str = Field(pattern=NAME)


class BroadcastRequest(MessageBody):
    """To the named agents and every active agent serving `capability` (at least one)."""

    recipients: list[str] | None = None
    capability: str | None = None


class ChannelRequest(BaseModel):
    """A channel for these participants and its creator (the caller)."""

    model_config = ConfigDict(extra="forbid")

    participants: list[str] = Field(min_length=1, max_length=1000)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


async def _send(caller: Caller, body: MessageBody, recipient: str) -> dict[str, Any]:
    async with caller.audit(Action.MESSAGES_SEND, obj=f"inbox:{recipient}"):
        result = await caller.tenant_services.hub.send_message(
            body.message(caller.principal.subject), recipient
        )
    return _dump(result)


@router.post("/v1/agents/{name}/messages", status_code=201)
async def send_to_agent(
    body: MessageBody,
    name: str = AgentName,
    caller: Caller = Depends(allowed(Action.MESSAGES_SEND)),  # noqa: B008
) -> dict[str, Any]:
    """Put a message in the agent's inbox. Raises: AgentNotFound (404)."""
    return await _send(caller, body, name)


@router.post("/v1/messages", status_code=201)
async def send_message(
    body: SendRequest,
    caller: Caller = Depends(allowed(Action.MESSAGES_SEND)),  # noqa: B008
) -> dict[str, Any]:
    """Put a message in `recipient`'s inbox. Raises: AgentNotFound (404)."""
    return await _send(caller, body, body.recipient)


@router.post("/v1/messages/broadcast", status_code=201)
async def broadcast(
    body: BroadcastRequest,
    caller: Caller = Depends(allowed(Action.MESSAGES_SEND)),  # noqa: B008
) -> dict[str, Any]:
    """Copy a message to many inboxes. Raises: SpecInvalid (no target), AgentNotFound."""
    message = MessageBody.model_validate(body.model_dump(exclude={"recipients", "capability"}))
    target = ",".join(body.recipients or []) or f"capability:{body.capability}"
    async with caller.audit(Action.MESSAGES_SEND, obj=f"broadcast:{target}"):
        result = await caller.tenant_services.hub.broadcast_message(
            message.message(caller.principal.subject), body.recipients, body.capability
        )
    return {**_dump(result), "count": result.count}


@router.post("/v1/topics/{topic}/messages", status_code=201)
async def publish(
    body: MessageBody,
    topic: str = TopicName,
    caller: Caller = Depends(allowed(Action.MESSAGES_SEND)),  # noqa: B008
) -> dict[str, Any]:
    """Publish on a topic: every subscribed pool and open feed gets it."""
    async with caller.audit(Action.MESSAGES_SEND, obj=f"topic:{topic}"):
        result = await caller.tenant_services.hub.publish(
            topic, body.message(caller.principal.subject)
        )
    return _dump(result)


@router.post("/v1/channels", status_code=201)
async def create_channel(
    body: ChannelRequest,
    caller: Caller = Depends(allowed(Action.MESSAGES_SEND)),  # noqa: B008
) -> dict[str, Any]:
    """A channel only its participants (the caller included) may read or write."""
    async with caller.audit(Action.MESSAGES_SEND, obj="channel"):
        channel = await caller.tenant_services.hub.create_channel(
            body.participants, caller.principal.subject
        )
    return _dump(channel)


@router.get("/v1/channels/{channel_id}")
async def get_channel(
    channel_id: str = ChannelId,
    caller: Caller = Depends(allowed(Action.MESSAGES_READ)),  # noqa: B008
) -> dict[str, Any]:
    """The channel's participants. Raises: NotFound, Forbidden (not a participant)."""
    hub = caller.tenant_services.hub
    await hub.read_channel(channel_id, caller.principal.subject, limit=1)  # participant check
    return _dump(await hub.get_channel(channel_id))


@router.post("/v1/channels/{channel_id}/messages", status_code=201)
async def post_to_channel(
    body: MessageBody,
    channel_id: str = ChannelId,
    caller: Caller = Depends(allowed(Action.MESSAGES_SEND)),  # noqa: B008
) -> dict[str, Any]:
    """Write in the channel as the caller. Raises: NotFound, Forbidden (not a participant)."""
    async with caller.audit(Action.MESSAGES_SEND, obj=f"channel:{channel_id}"):
        result = await caller.tenant_services.hub.post_to_channel(
            channel_id, body.message(caller.principal.subject)
        )
    return _dump(result)


@router.get("/v1/channels/{channel_id}/messages")
async def read_channel(
    channel_id: str = ChannelId,
    cursor: str | None = Query(default=None, pattern=STREAM_ID),
    limit: int = Query(default=50, ge=1, le=1000),
    caller: Caller = Depends(allowed(Action.MESSAGES_READ)),  # noqa: B008
) -> dict[str, Any]:
    """A page of the channel, oldest first. Raises: NotFound, Forbidden (not a participant)."""
    page = await caller.tenant_services.hub.read_channel(
        channel_id, caller.principal.subject, after=cursor, limit=limit
    )
    return _dump(page)


@router.get("/v1/messages/history")
async def history(
    target: str = Query(pattern=TARGET, description="inbox:<agent>, topic:<name> or channel:<id>"),
    cursor: str | None = Query(default=None, pattern=STREAM_ID, description="next_cursor"),
    since_ms: int | None = Query(default=None, ge=0, le=MAX_STREAM_MS),
    until_ms: int | None = Query(default=None, ge=0, le=MAX_STREAM_MS),
    limit: int = Query(default=50, ge=1, le=1000),
    newest_first: bool = False,
    caller: Caller = Depends(allowed(Action.MESSAGES_READ)),  # noqa: B008
) -> dict[str, Any]:
    """A page of a stream's messages; pass `next_cursor` back as `cursor` for the next.

    Raises: SpecInvalid (malformed target or range), NotFound/Forbidden (channels).
    """
    bound = {"before": cursor} if newest_first else {"after": cursor}
    page = await caller.tenant_services.hub.get_message_history(
        target,
        reader=caller.principal.subject,
        since_ms=since_ms,
        until_ms=until_ms,
        limit=limit,
        newest_first=newest_first,
        **bound,
    )
    return _dump(page)
