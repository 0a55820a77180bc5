"""Request bodies counted as they arrive: above the limit, 413 before anything parses them.

A `Content-Length` over the limit is refused at once. A chunked body has no length: the
`receive` this middleware hands inward counts the bytes and, past the limit, raises
`BodyTooLarge` instead of giving more; whatever the inner app then answers (FastAPI turns
errors while reading a body into 400), the client gets 413. It sits outside everything that
reads a body (the routes, the idempotency middleware), so a credential check never comes
first: an unauthenticated 3 MiB chunked body is refused after ~1 MiB.

Serve's HTTP proxy reads the client's body into memory on its own, as fast as it arrives, to
hand it to the replica: a hard cap at the edge needs a reverse proxy with a body limit
(e.g. nginx `client_max_body_size`).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_body


class BodyTooLarge(HTTPException):
    """Raised by the counting `receive` once the body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than the limit of {limit} bytes")


class BodyLimit:
    """Pure ASGI middleware: 413 for a body above `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            message = f"the body is {length} bytes; the limit is {self.max_bytes}"
            await _too_large(message)(scope, receive, send)
            return
        await _Counted(self.app, self.max_bytes).run(scope, receive, send)


class _Counted:
    """One request: its `receive` counted, its answer replaced by 413 once over the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.received = 0
        self.exceeded = False
        self.started = False

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.exceeded:
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.max_bytes:
                    self.exceeded = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            if self.exceeded and not self.started:
                return  # the inner app's answer to a body it never got whole: 413 instead
            self.started = self.started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not self.exceeded or self.started:
                raise
        if self.exceeded and not self.started:
            message = f"the body passed the limit of {self.max_bytes} bytes"
            await _too_large(message)(scope, receive, send)


def _too_large(message: str) -> JSONResponse:
    # The client may still be sending: close the connection rather than read on.
    return JSONResponse(
        error_body("PayloadTooLarge", message), status_code=413, headers={"Connection": "close"}
    )


__all__ = ["BodyLimit", "BodyTooLarge"]
