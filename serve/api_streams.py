"""Live events as Server-Sent Events and WebSocket frames, resumable without loss.

Every event carries its position: the Redis stream id for an execution's events, and for
the event bus (one stream per event type) a cursor naming the position in each stream
(`step.started=1700000000000-0,step.succeeded=...`). A client that reconnects with the last
id it saw (`Last-Event-ID`, or `?cursor=`) gets every later event exactly once, in order,
from any replica: the streams are in Redis, not in the replica.

Execution streams end when the execution has ended and every event was sent; bus streams
run until the client leaves. Idle SSE streams send a `: keep-alive` comment every
`KEEPALIVE_S` so proxies keep the connection open.

Every open stream holds a lease in its key's and its tenant's counts (the `quotas`
`streams_per_key` and `streams_per_tenant`); a stream past either is refused with 429 (a
WebSocket closes with 4429), naming the limit. The lease is given back however the stream
ends, and expires on its own if the replica serving it dies.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Depends, Header, Path, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect

from cluster.auth.models import Action
from cluster.auth.security import is_allowed
from cluster.errors import (
    DafnckError,
    Forbidden,
    InputInvalid,
    NotFound,
    QuotaExceeded,
    Unauthorized,
)
from cluster.quotas import StreamLease
from cluster.streams import stream_replies, unreachable_as_error
from serve import patterns
from serve.deps import Caller, allowed, credential, deny, request_id, services_of
from workflows.execution import Event, Execution

router = APIRouter(tags=["streams"])

STREAM_ID = re.compile(patterns.STREAM_ID)  # each part below 2^64, as Redis keeps them
#: Longest wait of one read; also how soon a stream notices its execution ended.
BLOCK_MS = 1000
#: Seconds without an event after which an SSE stream sends a comment.
KEEPALIVE_S = 15.0
EVENT_TYPES = r"^[a-z*?\[\]][a-z0-9_.*?\[\]]*$"
#: The cursor key of the position of types the cursor does not name.
_DEFAULT = ""
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Frame = tuple[str, dict[str, Any]]


class EventStreamResponse(StreamingResponse):
    """An SSE body; as a route's `response_class` it documents `text/event-stream`."""

    media_type = "text/event-stream"


class _LeasedResponse(StreamingResponse):
    """An SSE response that gives its stream's lease back however it ends: the body ran
    out, sending failed, or the request was cancelled (Serve cancels it when the client
    leaves). Starlette leaves a body that failed to send suspended, so the body's own
    `finally` cannot be relied on."""

    def __init__(self, body: AsyncIterator[bytes], lease: StreamLease) -> None:
        super().__init__(body, media_type="text/event-stream", headers=_SSE_HEADERS)
        self.lease = lease

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.lease.release()


def _resume_point(last_event_id: str | None, cursor: str | None) -> str:
    """`Last-Event-ID` wins over `?cursor=` (a browser's EventSource sends it on reconnect)."""
    point = last_event_id or cursor or "0-0"
    if not STREAM_ID.match(point):
        raise InputInvalid("cursor", [f"{point!r} is not a stream id like '1700000000000-0'"])
    return point


def _sse(frame_id: str, data: dict[str, Any], event: str = "") -> bytes:
    kind = f"event: {event}\n" if event else ""
    return f"id: {frame_id}\n{kind}data: {json.dumps(data, default=str)}\n\n".encode()


# -- execution events ----------------------------------------------------------------------


async def _load(caller: Caller, execution_id: str) -> Execution:
    return await asyncio.to_thread(caller.tenant_services.executions.load, execution_id)


async def execution_frames(
    caller: Caller, execution_id: str, after: str
) -> AsyncIterator[Frame | None]:
    """(stream id, event) after `after`, until the execution has ended; None when idle.

    The final status and the events telling of it commit together, so once the status is
    terminal one last read after the cursor finds every remaining event.
    """
    executions = caller.tenant_services.executions
    store = executions.store
    key = executions.events_key(execution_id)
    while True:
        with unreachable_as_error(store):
            reply = await store.async_redis().xread({key: after}, count=500, block=BLOCK_MS)
        entries = [e for _, rows in stream_replies(reply) for e in rows]
        for entry_id, fields in entries:
            after = entry_id
            yield entry_id, Event.model_validate_json(fields["event"]).model_dump(mode="json")
        if entries:
            continue
        if (await _load(caller, execution_id)).status.terminal:
            with unreachable_as_error(store):
                rest = await store.async_redis().xrange(key, min=f"({after}")
            for entry_id, fields in rest:
                yield entry_id, Event.model_validate_json(fields["event"]).model_dump(mode="json")
            return
        yield None


async def _lease(caller: Caller) -> StreamLease:
    """A slot for one more stream of the caller's key and tenant. Raises: QuotaExceeded."""
    services = caller.services
    quotas = services.settings.quotas.for_tenant(caller.tenant)
    holder = caller.principal.key_id or caller.principal.subject
    return await StreamLease(services.store.for_tenant(caller.tenant), quotas, holder).acquire()


async def _leased(
    frames: AsyncIterator[Frame | None], lease: StreamLease
) -> AsyncIterator[Frame | None]:
    """`frames`, renewing the lease meanwhile and releasing it however the stream ends
    (finished, client gone, cancelled, failed)."""
    try:
        async for frame in frames:
            await lease.renew()
            yield frame
    finally:
        await lease.release()


async def _sse_body(frames: AsyncIterator[Frame | None]) -> AsyncIterator[bytes]:
    quiet_since = time.monotonic()
    async for frame in frames:
        if frame is not None:
            quiet_since = time.monotonic()
            yield _sse(frame[0], frame[1])
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"


@router.get("/v1/executions/{execution_id}/events/stream", response_class=EventStreamResponse)
async def stream_execution_events(
    execution_id: str = Path(min_length=1, max_length=64, pattern=patterns.ID),
    cursor: str | None = Query(default=None, description="Resume after this stream id"),
    last_event_id: str | None = Header(default=None),
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> StreamingResponse:
    """The execution's events as SSE (`id:` is the stream id), ending when it has ended.

    Raises: NotFound, InputInvalid (a malformed cursor), QuotaExceeded (streams open).
    """
    after = _resume_point(last_event_id, cursor)
    await _load(caller, execution_id)  # 404 before the stream starts
    lease = await _lease(caller)
    body = _sse_body(_leased(execution_frames(caller, execution_id, after), lease))
    return _LeasedResponse(body, lease)


async def _ws_caller(websocket: WebSocket, action: Action) -> Caller | None:
    """Authenticate on connect; on failure close with 4401/4403 and return None."""
    await websocket.accept()
    svc = await services_of(websocket.app)
    try:
        principal = await svc.gate.authenticate(credential(cast(Request, websocket)))
        who = Caller(principal, request_id(cast(Request, websocket)), svc)
        if not is_allowed(principal, action):
            await deny(who, action)  # audited, then Forbidden
        await svc.tenant(principal.tenant)  # later reads of `who.tenant_services` never block
    except Unauthorized as exc:
        await websocket.close(code=4401, reason=exc.message[:120])
        return None
    except Forbidden as exc:
        await websocket.close(code=4403, reason=exc.message[:120])
        return None
    return who


@router.websocket("/v1/ws/executions/{execution_id}")
async def ws_execution_events(websocket: WebSocket, execution_id: str) -> None:
    """The execution's events as JSON frames `{"id", "event"}`, after `?cursor=`; the socket
    closes normally (1000) once the execution has ended and every event was sent.

    Close codes: 4400 bad cursor, 4401 no or bad credential, 4403 role, 4404 not found,
    4429 a stream quota (the reason names it).
    """
    who = await _ws_caller(websocket, Action.EXECUTIONS_READ)
    if who is None:
        return
    try:
        patterns.check(execution_id, patterns.ID, "execution_id")
        after = _resume_point(None, websocket.query_params.get("cursor"))
        await _load(who, execution_id)
    except InputInvalid as exc:
        await websocket.close(code=4400, reason=exc.message[:120])
        return
    except NotFound as exc:
        await websocket.close(code=4404, reason=exc.message[:120])
        return
    try:
        lease = await _lease(who)
    except QuotaExceeded as exc:
        await websocket.close(code=4429, reason=exc.message[:120])
        return
    try:
        async for frame in _leased(execution_frames(who, execution_id, after), lease):
            if frame is not None:
                await websocket.send_json({"id": frame[0], "event": frame[1]})
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        return
    except DafnckError as exc:
        await websocket.close(code=1011, reason=exc.message[:120])
    finally:
        await lease.release()


# -- the event bus ---------------------------------------------------------------------------


def parse_bus_cursor(text: str | None) -> dict[str, str]:
    """`type=id,type=id` -> {type: id}; a bare id (`0-0`) is where unnamed types start.
    Each type must be an event type (`step.started`): it becomes part of a key.

    Raises: InputInvalid.
    """
    positions: dict[str, str] = {}
    for part in filter(None, (text or "").split(",")):
        kind, _, position = part.rpartition("=")
        bad_kind = not re.match(patterns.EVENT_TYPE, kind) if kind else "=" in part
        if not STREAM_ID.match(position) or bad_kind:
            raise InputInvalid(
                "cursor", [f"{part!r} is not 'event.type=<stream id>' (from an event's id)"]
            )
        positions[kind or _DEFAULT] = position
    return positions


def bus_cursor(positions: dict[str, str]) -> str:
    parts = [f"{k}={v}" if k != _DEFAULT else v for k, v in sorted(positions.items())]
    return ",".join(parts)


async def bus_frames(
    caller: Caller, pattern: str, positions: dict[str, str]
) -> AsyncIterator[Frame | None]:
    """Domain events of the types matching `pattern`, each with the cursor after it.

    Types not in the cursor are read from their start: a stream the client never saw holds
    only events it missed. Events of one type keep their order; types interleave as read.
    """
    store = caller.tenant_services.store
    redis = store.async_redis()
    prefix = store.key("events", "")
    start = positions.pop(_DEFAULT, "0-0")
    while True:
        with unreachable_as_error(store):
            types = await redis.smembers(store.key("events", "types"))
        for kind in sorted(types):
            if fnmatch.fnmatchcase(kind, pattern):
                positions.setdefault(kind, start)
        if not positions:
            await asyncio.sleep(BLOCK_MS / 1000)
            yield None
            continue
        with unreachable_as_error(store):
            reply = await redis.xread(
                {prefix + k: v for k, v in positions.items()}, count=500, block=BLOCK_MS
            )
        got = False
        for stream, rows in stream_replies(reply):
            kind = stream[len(prefix) :]
            for entry_id, fields in rows:
                got = True
                positions[kind] = entry_id
                seen = positions if start == "0-0" else {**positions, _DEFAULT: start}
                yield bus_cursor(seen), json.loads(fields["event"])
        if not got:
            yield None


@router.get("/v1/events/stream", response_class=EventStreamResponse)
async def stream_bus_events(
    type: str = Query(default="*", pattern=EVENT_TYPES, description="A type or glob: step.*"),
    cursor: str | None = Query(default=None, description="An event's `id`, to resume after"),
    subject: str | None = Query(
        default=None, max_length=300, description="Only events about this: a task id for task.token"
    ),
    last_event_id: str | None = Header(default=None),
    caller: Caller = Depends(allowed(Action.EXECUTIONS_READ)),  # noqa: B008
) -> StreamingResponse:
    """Domain events (agents, executions, steps, an LLM task's tokens) as SSE; resumes
    after `Last-Event-ID`.

    Without a cursor the stream starts with the events published from now on.

    Raises: InputInvalid (a malformed cursor), QuotaExceeded (streams open).
    """
    positions = parse_bus_cursor(last_event_id or cursor)
    if not (last_event_id or cursor):
        positions = await _now(caller, type)
    lease = await _lease(caller)
    frames = _leased(bus_frames(caller, type, positions), lease)
    body = _sse_body(_about(frames, subject) if subject else frames)
    return _LeasedResponse(body, lease)


async def _about(frames: AsyncIterator[Frame | None], subject: str) -> AsyncIterator[Frame | None]:
    """Only the frames whose event is about `subject` (others become keep-alives)."""
    async for frame in frames:
        yield frame if frame is None or frame[1].get("subject") == subject else None


async def _now(caller: Caller, pattern: str) -> dict[str, str]:
    """The current end of every matching stream: a fresh subscriber sees only new events."""
    store = caller.tenant_services.store
    redis = store.async_redis()
    with unreachable_as_error(store):
        types = await redis.smembers(store.key("events", "types"))
        matching = sorted(t for t in types if fnmatch.fnmatchcase(t, pattern))
        positions = {}
        for kind in matching:
            rows = await redis.xrevrange(store.key("events", kind), count=1)
            positions[kind] = str(rows[0][0]) if rows else "0-0"
    return positions
