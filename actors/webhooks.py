"""Execution-end webhooks: signed (Standard Webhooks), retried, delivered at least once.

`POST /v1/executions` with `webhook: {url}` registers a record under `webhook:<execution>`
before the execution starts. The supervisor's `WebhookDispatcher` reads the ends of
executions (`execution.succeeded|failed|cancelled` on the event bus) through a consumer
group, so an end that was not yet delivered when the supervisor died is read again when
it restarts. The webhook-id comes from the end's stream id: the same on every attempt and
after a restart, so receivers deduplicate. Each attempt is signed anew (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`) with the tenant's
secret, retried with exponential backoff on 5xx, 408, 429 and connection errors; every
failed attempt and the outcome are appended to the execution's events.

The URL is checked when the execution is submitted (`check_webhook`) and every connection
again (`cluster.netguard`): an address the platform's `outbound_allow` does not name
(loopback, private, link-local, cloud metadata) is refused, and not retried. Events record
only the outcome's class ("refused", "timeout", "connection error", "http 500"), never a
remote's error text: the events are read by viewers, the remote may be anything.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import redis
from pydantic import Field, HttpUrl
from standardwebhooks import Webhook
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from actors.messages import DomainEvent
from cluster.contracts import Contract
from cluster.errors import OutboundRefused
from cluster.netguard import OutboundPolicy, guarded_transport, refused_in
from cluster.outbound import outbound_policy
from cluster.store import Store
from cluster.streams import MAX_BLOCK_MS, cancel_and_wait, stream_replies
from workflows.execution import Event
from workflows.store import MAX_EVENTS, ExecutionStore

log = logging.getLogger(__name__)

#: The bus event types that end an execution, and so fire its webhook.
END_TYPES = ("execution.succeeded", "execution.failed", "execution.cancelled")
GROUP = "webhooks"
#: A webhook record outlives its execution's start by this long.
RECORD_TTL_S = 30 * 24 * 3600
#: Statuses worth another attempt; any other 4xx is the receiver refusing for good.
RETRY_STATUSES = frozenset({408, 429})


class WebhookSpec(Contract):
    """Where to POST the execution's summary when it ends (http or https)."""

    url: HttpUrl = Field(description="http(s) URL called once the execution ends")


@dataclass(frozen=True)
class WebhookPolicy:
    """How deliveries are retried: exponential backoff from `base_s`, capped at `cap_s`."""

    max_attempts: int = 10
    base_s: float = 0.5
    cap_s: float = 60.0
    timeout_s: float = 10.0


class Retryable(Exception):
    """An attempt the receiver may accept later (5xx, 408, 429)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, status)

    @property
    def status(self) -> int | None:
        return self.args[1]  # type: ignore[no-any-return]


class Refused(Retryable):
    """The receiver refused the webhook for good (a 3xx or a 4xx other than 408 and 429)."""


def check_webhook(spec: WebhookSpec, outbound: OutboundPolicy) -> None:
    """Refuse a URL whose host resolves to an address `outbound` does not allow (blocking:
    it resolves the host). Raises: OutboundRefused naming `webhook.url`."""
    outbound.check_url(str(spec.url), "webhook.url")


def outcome_of(exc: BaseException) -> str:
    """The class of a failed attempt, for the events: never the remote's own words."""
    if refused_in(exc) is not None:
        return "refused"
    if isinstance(exc, Retryable) and exc.status is not None:
        return f"http {exc.status}"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "connection error"


def webhook_key(store: Store, execution_id: str) -> str:
    return store.key("webhook", execution_id)


def register_webhook(store: Store, execution_id: str, spec: WebhookSpec) -> None:
    """Remember the execution's webhook (before the execution starts, so no end is missed)."""
    key = webhook_key(store, execution_id)
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(key, mapping={"url": str(spec.url), "state": "pending", "attempts": 0})
    pipe.expire(key, RECORD_TTL_S)
    pipe.execute()


def signing_secret(store: Store) -> str:
    """The tenant's signing secret (`whsec_<base64>`), created on first use."""
    key = store.key("webhook", "secret")
    fresh = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    store.redis.set(key, fresh, nx=True)
    return str(store.redis.get(key))


def signed_headers(secret: str, webhook_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
        "content-type": "application/json",
    }


class WebhookDispatcher:
    """Delivers the webhooks of ended executions of one tenant, from the supervisor."""

    def __init__(
        self,
        store: Store,
        executions: ExecutionStore,
        policy: WebhookPolicy | None = None,
        consumer: str = "supervisor",
        sweep_s: float = 30.0,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.store = store
        #: Where deliveries may connect: by default this process's settings' `outbound_allow`.
        self.outbound = outbound or outbound_policy(None)
        #: How often entries left unacknowledged (a delivery cut short by an outage) are
        #: taken up again; the first sweep, at start, takes up those of a dead supervisor.
        self.sweep_s = sweep_s
        self.executions = executions
        self.policy = policy or WebhookPolicy()
        self.consumer = consumer
        self.streams = [store.key("events", t) for t in END_TYPES]
        #: The end streams known to have our consumer group.
        self._grouped: list[str] = []
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Deliver every new end, and now and then what was read but not acknowledged."""
        swept = -self.sweep_s
        while True:
            try:
                if time.monotonic() - swept >= self.sweep_s:
                    await self._read("0")
                    swept = time.monotonic()
                await self._read(">")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage of Redis must not end the loop
                if "NOGROUP" in str(exc):  # a stream was deleted: find the groups again
                    self._grouped.clear()
                log.exception("reading execution ends failed; trying again")
                await asyncio.sleep(1)

    async def close(self) -> None:
        """Stop the deliveries under way (not acknowledged: read again on the next start)."""
        for task in list(self._running.values()):
            await cancel_and_wait(task)  # redis.asyncio can absorb a single cancel

    async def _groups(self) -> list[str]:
        """The end streams with our consumer group, made (from their first entry) on streams
        that appeared: nothing is written before an execution ends, so a new tenant stays
        empty (a restore needs that), and no end is missed."""
        redis_ = self.store.async_redis()
        for stream in self.streams:
            if stream in self._grouped or not await redis_.exists(stream):
                continue
            try:
                await redis_.xgroup_create(stream, GROUP, id="0")
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._grouped.append(stream)
        return self._grouped

    async def _read(self, cursor: str) -> None:
        streams = await self._groups()
        if not streams:
            await asyncio.sleep(MAX_BLOCK_MS / 1000)
            return
        reply = await self.store.async_redis().xreadgroup(
            GROUP,
            self.consumer,
            dict.fromkeys(streams, cursor),
            count=100,
            block=MAX_BLOCK_MS if cursor == ">" else None,
        )
        for stream, entries in stream_replies(reply):
            for entry_id, fields in entries:
                if entry_id in self._running:  # a sweep finds the deliveries under way too
                    continue
                task = asyncio.create_task(self._handle(stream, entry_id, fields or {}))
                self._running[entry_id] = task
                task.add_done_callback(functools.partial(self._forget, entry_id))

    def _forget(self, entry_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(entry_id, None)

    async def _handle(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        """Deliver the end's webhook (if it has one), then acknowledge the end.

        An error before the outcome is recorded (Redis away) leaves the end unacknowledged,
        for the next sweep; an entry that is not an event is acknowledged and dropped.
        """
        try:
            event = DomainEvent.from_fields(fields)
        except ValueError:
            log.warning("dropping %s of %s: not an event", entry_id, stream)
            await self.store.async_redis().xack(stream, GROUP, entry_id)
            return
        execution_id = str(event.data.get("execution") or event.subject)
        webhook_id = f"msg_{execution_id}_{entry_id}"
        try:
            url, state, done_id = await self.store.async_redis().hmget(
                webhook_key(self.store, execution_id), "url", "state", "webhook_id"
            )
            if url and not (state in ("delivered", "failed") and done_id == webhook_id):
                await self.deliver(execution_id, url, webhook_id, event)
            await self.store.async_redis().xack(stream, GROUP, entry_id)
        except Exception:
            log.exception("webhook %s: trying again at the next sweep", webhook_id)

    async def deliver(self, execution_id: str, url: str, webhook_id: str, end: DomainEvent) -> None:
        """POST the execution's summary until it is accepted or the policy gives up."""
        body = json.dumps(await self._payload(execution_id, end), default=str)
        secret = await asyncio.to_thread(signing_secret, self.store)
        policy = self.policy
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts),
            wait=wait_exponential(multiplier=policy.base_s, max=policy.cap_s),
            retry=retry_if_exception_type((Retryable, httpx.TransportError))
            & retry_if_not_exception_type(Refused),
            reraise=True,
        )
        status: int | None = None
        transport = guarded_transport(self.outbound)
        async with httpx.AsyncClient(timeout=policy.timeout_s, transport=transport) as http:
            try:
                async for attempt in retrying:
                    with attempt:
                        status = await self._attempt(
                            http, execution_id, url, webhook_id, body, secret
                        )
            except (Retryable, httpx.HTTPError, OutboundRefused) as exc:
                last = exc.status if isinstance(exc, Retryable) else None
                await self._outcome(execution_id, "failed", webhook_id, last, outcome_of(exc))
                return
        await self._outcome(execution_id, "delivered", webhook_id, status)

    async def _attempt(
        self, http: httpx.AsyncClient, execution_id: str, url: str, webhook_id: str, body: str,
        secret: str,
    ) -> int:  # fmt: skip
        """One signed POST; its status.

        Raises: Retryable, Refused, httpx.HTTPError, OutboundRefused (the address).
        """
        headers = signed_headers(secret, webhook_id, body, datetime.now(UTC))
        attempts = await self.store.async_redis().hincrby(
            webhook_key(self.store, execution_id), "attempts", 1
        )
        failed = {"webhook_id": webhook_id, "attempt": attempts, "status": None}
        try:
            status = (await http.post(url, content=body, headers=headers)).status_code
        except (httpx.HTTPError, OutboundRefused) as exc:
            await self._append(
                execution_id, "webhook.attempt_failed", {**failed, "error": outcome_of(exc)}
            )
            raise
        if status >= 300:
            await self._append(execution_id, "webhook.attempt_failed", {**failed, "status": status})
        if status >= 500 or status in RETRY_STATUSES:
            raise Retryable(f"{url} answered {status}", status)
        if status >= 300:
            raise Refused(f"{url} answered {status}", status)
        return status

    async def _payload(self, execution_id: str, end: DomainEvent) -> dict[str, Any]:
        """`{type, timestamp, data}` with the execution's summary (no step states)."""
        meta = await self.store.async_redis().hget(self.store.key("exec", execution_id), "meta")
        summary = json.loads(meta) if meta else {"id": execution_id}
        keep = ("id", "workflow", "version", "status", "outputs", "error", "parent")
        data = {k: summary.get(k) for k in keep}
        data["created_at"], data["ended_at"] = summary.get("created_at"), end.at
        return {
            "type": end.type,
            "timestamp": datetime.fromtimestamp(end.at, UTC).isoformat(),
            "data": data,
        }

    async def _outcome(
        self, execution_id: str, state: str, webhook_id: str, status: int | None, error: str = ""
    ) -> None:
        key = webhook_key(self.store, execution_id)
        redis_ = self.store.async_redis()
        fields = {
            "state": state,
            "last_status": "" if status is None else status,
            "at": time.time(),
        }
        await redis_.hset(key, mapping={**fields, "webhook_id": webhook_id})
        attempts = int(await redis_.hget(key, "attempts") or 0)
        data: dict[str, Any] = {"webhook_id": webhook_id, "attempts": attempts, "status": status}
        if error:
            data["error"] = error
        await self._append(execution_id, f"webhook.{state}", data)

    async def _append(self, execution_id: str, kind: str, data: dict[str, Any]) -> None:
        """Add a delivery event to the execution's event log (its streams and history)."""
        event = Event(type=kind, execution=execution_id, data=data)
        await self.store.async_redis().xadd(
            self.executions.events_key(execution_id),
            {"event": event.model_dump_json()},
            maxlen=MAX_EVENTS,
            approximate=True,
        )
