"""OpenTelemetry tracing: the tracer of this process, W3C propagation, and LLM spans.

How to instrument (the whole API; import it as `from cluster import tracing`):

    with tracing.span("step review", parent=task.context.traceparent,
                      attributes={"dafnck.execution_id": eid}) as s:
        ...                                   # child spans nest through contextvars
    task_ctx.traceparent = tracing.current_traceparent()   # carry it across a process

    with tracing.llm_span("openai", "gpt-4o-mini") as s:   # GenAI semantic conventions
        reply = await client.chat(...)
        tracing.llm_usage(s, input_tokens=12, output_tokens=40, response_model="gpt-4o-mini",
                          finish_reasons=["stop"])
    metrics.record_tokens("openai", "gpt-4o-mini", tenant, 12, 40, cost_usd=0.0001)

Spans cost nothing until `setup_tracing` ran in the process (the system actors, replicas
and API call it); without a parent (`traceparent` or a current span) `span(...,
root=False)` records nothing, so untraced hot paths stay cheap. The exporter comes from
settings: none | console | otlp-grpc | otlp-http | redis (the built-in span store the API's
`/v1/executions/{id}/trace` reads). Ray's own tracing hook is not used (it breaks Serve).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cluster import metrics
from cluster.settings import Settings

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_INVALID = INVALID_SPAN = trace.INVALID_SPAN
#: Span attributes that say whose span it is (the span store keys by them).
TENANT = "dafnck.tenant"
EXECUTION = "dafnck.execution_id"


def setup_tracing(settings: Settings, service: str, *, redis_url: str | None = None) -> bool:
    """Configure this process's tracer once from settings; True when spans are exported.

    `service` names the process in traces (api, supervisor, agent, cli).
    """
    global _provider, _tracer
    if _provider is not None:
        return True
    exporter = _exporter(settings, redis_url)
    if exporter is None:
        return False
    resource = Resource.create({"service.name": f"dafnck-{service}", "service.namespace": "dafnck",
                                "process.pid": os.getpid()})  # fmt: skip
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    _provider, _tracer = provider, provider.get_tracer("dafnck")
    return True


def _exporter(settings: Settings, redis_url: str | None) -> SpanExporter | None:
    choice, endpoint = settings.trace_exporter, settings.trace_endpoint
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    if choice == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=endpoint) if endpoint else HttpExporter()
    if choice == "redis" and (redis_url or settings.redis_url):
        from cluster.span_store import RedisSpanExporter

        return RedisSpanExporter.from_url(
            redis_url or settings.redis_url or "",
            tenant=settings.tenant,
            ttl_s=settings.trace_retention_s,
        )
    return None


def flush(timeout_ms: int = 5000) -> None:
    """Export every finished span now (tests, and before a process exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def shutdown() -> None:
    """Flush and drop this process's tracer (tests that set tracing up again)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, trace.NoOpTracer()


def enabled() -> bool:
    return _provider is not None


def active() -> bool:
    """Whether a span is current (so work started now belongs to a trace)."""
    return trace.get_current_span().get_span_context().is_valid


# -- propagation ----------------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, or None when nothing is traced."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> otel_context.Context | None:
    """The remote parent carried in a task or message envelope (None when absent or bad)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextlib.contextmanager
def remote_parent(traceparent: str | None) -> Iterator[None]:
    """Make a carried `traceparent` the current context for the block (no span of its own)."""
    ctx = context_from(traceparent)
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


# -- spans ------------------------------------------------------------------------------------


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    root: bool = True,
) -> Iterator[Span]:
    """A span around the block, child of `parent` (a traceparent) or of the current span.

    With `root=False` and no parent at all, nothing is recorded. An exception marks the
    span as an error and propagates.
    """
    ctx = context_from(parent) if isinstance(parent, str) else parent
    if (
        _provider is None
        or (not root and ctx is None
            and not trace.get_current_span().get_span_context().is_valid)
    ):  # fmt: skip
        yield _INVALID
        return
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with _tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=attrs) as s:
        yield s


def start_span(
    name: str,
    *,
    parent: str | otel_context.Context | Span | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """A span that outlives a block (an execution); end it with `end_span`."""
    if _provider is None:
        return _INVALID
    if isinstance(parent, Span):
        ctx: otel_context.Context | None = trace.set_span_in_context(parent)
    else:
        ctx = context_from(parent) if isinstance(parent, str) else parent
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    return _tracer.start_span(name, context=ctx, kind=kind, attributes=attrs)


def end_span(s: Span, error: str | None = None) -> None:
    if error:
        s.set_status(Status(StatusCode.ERROR, error))
    s.end()


def traceparent_of(s: Span) -> str | None:
    """The `traceparent` naming `s` as the parent (for an envelope)."""
    if not s.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(s))
    return carrier.get("traceparent")


@contextlib.contextmanager
def use_span(s: Span) -> Iterator[Span]:
    """Make `s` the current span for the block without ending it."""
    token = otel_context.attach(trace.set_span_in_context(s))
    try:
        yield s
    finally:
        otel_context.detach(token)


def tag_tenant(tenant: str) -> None:
    """Say whose the current span is (the span store keeps it under that tenant)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attribute(TENANT, tenant)


def mark_error(s: Span, message: str) -> None:
    s.set_status(Status(StatusCode.ERROR, message))


# -- GenAI -------------------------------------------------------------------------------------


@contextlib.contextmanager
def llm_span(
    provider: str,
    model: str,
    *,
    operation: str = "chat",
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A CLIENT span for one model call, named and tagged per the GenAI conventions; it
    also counts the call in `dafnck_llm_calls_total` by outcome."""
    attrs = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
        **(attributes or {}),
    }
    outcome = "failed"
    try:
        with span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attrs) as s:
            yield s
        outcome = "succeeded"
    finally:
        metrics.LLM_CALLS.inc(provider=provider, model=model, outcome=outcome)


def llm_usage(
    s: Span,
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    response_model: str | None = None,
    finish_reasons: Sequence[str] | None = None,
) -> None:
    """Put a model reply's usage on its `llm_span`."""
    for key, value in (
        ("gen_ai.usage.input_tokens", input_tokens),
        ("gen_ai.usage.output_tokens", output_tokens),
        ("gen_ai.response.model", response_model),
        ("gen_ai.response.finish_reasons", list(finish_reasons) if finish_reasons else None),
    ):
        if value is not None:
            s.set_attribute(key, value)


@contextlib.contextmanager
def tool_span(tool: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A span for one tool call an LLM agent makes (GenAI `execute_tool`)."""
    attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
             **(attributes or {})}  # fmt: skip
    with span(f"execute_tool {tool}", attributes=attrs) as s:
        yield s


__all__ = [
    "EXECUTION",
    "INVALID_SPAN",
    "TENANT",
    "active",
    "context_from",
    "current_traceparent",
    "enabled",
    "end_span",
    "flush",
    "llm_span",
    "llm_usage",
    "mark_error",
    "remote_parent",
    "setup_tracing",
    "shutdown",
    "span",
    "start_span",
    "tag_tenant",
    "tool_span",
    "traceparent_of",
    "use_span",
]
