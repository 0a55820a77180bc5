"""The built-in span store: recent spans in Redis, so an execution's timeline needs no
other service.

Keys (under `dafnck:<tenant>:`): `trace:<trace_id>` is a list of span JSON documents
(capped at `max_spans`), `trace-index:<execution_id>` the set of trace ids that touched
the execution, `traces` the tenant's trace ids by last write (capped at `max_traces`);
all expire `ttl_s` after their last write. A span's tenant is its
`dafnck.tenant` attribute, else the exporter's. Written from `BatchSpanProcessor`'s thread
in one pipeline per batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

log = logging.getLogger(__name__)

_TENANT = "dafnck.tenant"
_EXECUTION = "dafnck.execution_id"


def trace_key(tenant: str, trace_id: str) -> str:
    return f"dafnck:{tenant}:trace:{trace_id}"


def index_key(tenant: str, execution_id: str) -> str:
    return f"dafnck:{tenant}:trace-index:{execution_id}"


def span_document(span: ReadableSpan) -> dict[str, Any]:
    """A span as the trace route returns it: ids in hex, times in epoch milliseconds."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "service": str(span.resource.attributes.get("service.name", "")),
        "start_ms": (span.start_time or 0) / 1e6,
        "end_ms": (span.end_time or 0) / 1e6,
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        "status": "error" if span.status.status_code == StatusCode.ERROR else "ok",
        "status_message": span.status.description or None,
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def traces_key(tenant: str) -> str:
    return f"dafnck:{tenant}:traces"


class RedisSpanExporter(SpanExporter):
    """Keeps recent spans per trace and an index per execution id, capped and expiring.

    Bounded three ways: each trace keeps its last `max_spans` spans, each key expires
    `ttl_s` after its last write, and each tenant keeps its `max_traces` most recent traces
    (`traces` is a sorted set of trace ids by last write; older traces are deleted).
    """

    def __init__(
        self,
        client: redis.Redis,
        tenant: str,
        ttl_s: float = 86_400,
        max_spans: int = 2_000,
        max_traces: int = 10_000,
    ) -> None:
        self._client: Any = client
        self._tenant = tenant
        self._ttl_s = max(int(ttl_s), 1)
        self._max_spans = max_spans
        self._max_traces = max_traces
        self._trimmed_at: dict[str, float] = {}
        self._warned_at = 0.0

    @classmethod
    def from_url(cls, url: str, tenant: str, ttl_s: float = 86_400) -> RedisSpanExporter:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        return cls(client, tenant, ttl_s)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        pipe = self._client.pipeline(transaction=False)
        traces: dict[str, set[str]] = {}  # tenant -> trace ids written
        indexes: set[str] = set()
        for span in spans:
            doc = span_document(span)
            tenant = str(doc["attributes"].get(_TENANT) or self._tenant)
            pipe.rpush(trace_key(tenant, doc["trace_id"]), json.dumps(doc, default=str))
            traces.setdefault(tenant, set()).add(doc["trace_id"])
            execution = doc["attributes"].get(_EXECUTION)
            if execution:
                index = index_key(tenant, str(execution))
                pipe.sadd(index, doc["trace_id"])
                indexes.add(index)
        now = time.time()
        for tenant, trace_ids in traces.items():
            pipe.zadd(traces_key(tenant), dict.fromkeys(trace_ids, now))
            pipe.expire(traces_key(tenant), self._ttl_s)
            for trace_id in trace_ids:
                pipe.ltrim(trace_key(tenant, trace_id), -self._max_spans, -1)
                pipe.expire(trace_key(tenant, trace_id), self._ttl_s)
        for index in indexes:
            pipe.expire(index, self._ttl_s)
        try:
            pipe.execute()
            for tenant in traces:
                self._trim(tenant, now)
        except redis.RedisError as exc:  # tracing must never take the platform down
            if now - self._warned_at > _WARN_EVERY_S:  # an outage: say so once a minute
                self._warned_at = now
                log.warning("could not store %d spans: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _trim(self, tenant: str, now: float) -> None:
        """Delete the tenant's oldest traces beyond `max_traces` (at most every few seconds)."""
        if now - self._trimmed_at.get(tenant, 0.0) < _TRIM_EVERY_S:
            return
        self._trimmed_at[tenant] = now
        key = traces_key(tenant)
        self._client.zremrangebyscore(key, 0, now - self._ttl_s)  # expired on their own
        surplus = int(self._client.zcard(key)) - self._max_traces
        if surplus <= 0:
            return
        old = [t.decode() if isinstance(t, bytes) else t
               for t in self._client.zrange(key, 0, surplus - 1)]  # fmt: skip
        pipe = self._client.pipeline(transaction=False)
        pipe.delete(*(trace_key(tenant, t) for t in old))
        pipe.zrem(key, *old)
        pipe.execute()

    def shutdown(self) -> None:
        self._client.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


#: How often an exporter looks for traces beyond its tenant's cap.
_TRIM_EVERY_S = 5.0
_WARN_EVERY_S = 60.0


def execution_spans(client: Any, tenant: str, execution_id: str) -> list[dict[str, Any]]:
    """Every stored span of the traces that touched the execution, by start time."""
    trace_ids = sorted(client.smembers(index_key(tenant, execution_id)))
    pipe = client.pipeline(transaction=False)
    for trace_id in trace_ids:
        pipe.lrange(trace_key(tenant, trace_id), 0, -1)
    spans = [json.loads(raw) for rows in pipe.execute() for raw in rows] if trace_ids else []
    return sorted(spans, key=lambda s: (s["start_ms"], s["end_ms"]))


__all__ = [
    "RedisSpanExporter",
    "execution_spans",
    "index_key",
    "span_document",
    "trace_key",
    "traces_key",
]
