"""`Idempotency-Key` on every POST: the first answer is kept for a day and replayed.

The first request with a key claims it with `SET NX` of a "pending" marker under
(tenant, key), so concurrent duplicates never run the handler twice: they get 409 with
`Retry-After` while the first is in flight, then its stored answer. The same key with a
different request (method, path, query or body) is refused with 409. Server errors (5xx)
release the key so the client can retry. The tenant and the principal come from the
credential: a record is kept per (tenant, principal, key), so another caller reusing the key
runs as a fresh request under its own rights and never sees the first caller's answer. A
request whose credential does not authenticate passes through untouched (the route answers
401). Answers of credential routes (keys, users, the webhook secret) carry secrets: only
their status is kept, so a duplicate still has no second effect and gets 409 saying the
answer was not kept (no secret sits in Redis, its AOF or backups).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.errors import DafnckError
from serve.deps import credential, services_of
from serve.errors import error_body

HEADER = "idempotency-key"
#: How long a finished answer is replayed.
TTL_S = 24 * 3600
#: How long a claim may stay pending (a crashed replica releases its keys after this).
PENDING_TTL_S = 3600
MAX_KEY_CHARS = 255
#: Answers larger than this are not stored (the key is released instead).
MAX_STORED_BYTES = 1024 * 1024
_REPLAYED_HEADERS = frozenset({"content-type", "location", "retry-after"})
#: Routes whose answers hold secrets (a new key, a TOTP enrolment, a token, the webhook
#: secret): a stored copy would sit in Redis, its AOF and backups for a day; only the
#: status of their answer is kept.
_UNSTORED_PREFIXES = ("/v1/keys", "/v1/users", "/v1/auth/", "/v1/webhooks/secret")


def _stores_answers(path: str) -> bool:
    return not path.startswith(_UNSTORED_PREFIXES)


class IdempotencyMiddleware:
    """Pure ASGI middleware (it must see the whole body and the whole answer)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, max_body_bytes: int) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = headers.get(HEADER)
        length = headers.get("content-length", "")
        if not key or (length.isdigit() and int(length) > self.max_body_bytes):
            await self.app(scope, receive, send)
            return
        if len(key) > MAX_KEY_CHARS:
            problem = f"Idempotency-Key: at most {MAX_KEY_CHARS} characters, got {len(key)}"
            body = error_body("InputInvalid", problem, problems=[problem])
            await JSONResponse(body, status_code=422)(scope, receive, send)
            return
        redis_key = await self._redis_key(scope, key)
        if redis_key is None:
            await self.app(scope, receive, send)
            return
        redis, rkey, who = redis_key
        payload = await _read_body(receive)
        fingerprint = _fingerprint(scope, payload, who)
        await self._once(scope, _replay_receive(payload), send, redis, rkey, fingerprint)

    async def _redis_key(self, scope: Scope, key: str) -> tuple[Any, str, str] | None:
        """The tenant's Redis, the record's key for (principal, key), and the principal."""
        try:
            services = await services_of(self.fastapi_app)
            principal = await services.gate.authenticate(credential(Request(scope)))
        except DafnckError:
            return None
        store = services.store.for_tenant(principal.tenant)
        who = principal.subject
        digest = hashlib.sha256(f"{who}\0{key}".encode()).hexdigest()[:40]
        return store.async_redis(), store.key("idempotency", digest), who

    async def _once(
        self, scope: Scope, receive: Receive, send: Send, redis: Any, rkey: str, fp: str
    ) -> None:
        pending = json.dumps({"state": "pending", "fp": fp})
        if not await redis.set(rkey, pending, nx=True, ex=PENDING_TTL_S):
            raw = await redis.get(rkey)
            if raw is not None:
                await _answer_from(json.loads(raw), fp, scope, receive, send)
                return
            if not await redis.set(rkey, pending, nx=True, ex=PENDING_TTL_S):
                await _answer_from({"state": "pending", "fp": fp}, fp, scope, receive, send)
                return
        captured = _Captured(send)
        try:
            await self.app(scope, receive, captured)
        finally:
            if captured.storable:
                record = captured.record(fp, keep_body=_stores_answers(scope["path"]))
                await redis.set(rkey, json.dumps(record), ex=TTL_S)
            else:
                await redis.delete(rkey)


class _Captured:
    """A `send` that forwards the answer and keeps a copy of it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.complete = False
        self.too_big = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in message.get("headers", [])
                if k.decode("latin-1").lower() in _REPLAYED_HEADERS
            ]
        elif message["type"] == "http.response.body":
            self.body.extend(message.get("body", b""))
            self.too_big = self.too_big or len(self.body) > MAX_STORED_BYTES
            self.complete = not message.get("more_body", False)
        await self._send(message)

    @property
    def storable(self) -> bool:
        return self.complete and not self.too_big and 0 < self.status < 500

    def record(self, fp: str, keep_body: bool) -> dict[str, Any]:
        """What is kept: the whole answer, or (`keep_body` false) its status alone."""
        if not keep_body:
            return {"state": "done", "fp": fp, "status": self.status, "withheld": True}
        return {
            "state": "done",
            "fp": fp,
            "status": self.status,
            "headers": self.headers,
            "body": base64.b64encode(bytes(self.body)).decode(),
        }


async def _answer_from(
    record: dict[str, Any], fp: str, scope: Scope, receive: Receive, send: Send
) -> None:
    if record.get("fp") != fp:
        message = "this Idempotency-Key was used with a different request; use a new key"
        response = JSONResponse(error_body("IdempotencyKeyReused", message), status_code=409)
    elif record.get("withheld"):
        message = (
            f"a request with this Idempotency-Key already got {record.get('status')}; its "
            "answer held a secret and was not kept: list what it made, or use a new key"
        )
        response = JSONResponse(error_body("IdempotencyAnswerNotKept", message), status_code=409)
    elif record.get("state") != "done":
        message = "a request with this Idempotency-Key is still in progress; retry shortly"
        response = JSONResponse(
            error_body("IdempotencyKeyInProgress", message),
            status_code=409,
            headers={"Retry-After": "1"},
        )
    else:
        await _replay(record, send)
        return
    await response(scope, receive, send)


async def _replay(record: dict[str, Any], send: Send) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in record["headers"]]
    headers.append((b"idempotent-replayed", b"true"))
    body = base64.b64decode(record["body"])
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": record["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay_receive(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that keeps the connection open
        return {"type": "http.disconnect"}

    return receive


def _fingerprint(scope: Scope, body: bytes, who: str) -> str:
    digest = hashlib.sha256()
    query = scope.get("query_string", b"").decode()
    for part in (who, scope["method"], scope["path"], query):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


def install(app: FastAPI, max_body_bytes: int) -> None:
    app.add_middleware(IdempotencyMiddleware, fastapi_app=app, max_body_bytes=max_body_bytes)


__all__ = ["HEADER", "TTL_S", "IdempotencyMiddleware", "install"]
