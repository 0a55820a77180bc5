"""Telemetry in one import: metrics, traces and log context for every DafnckMachine process.

How to instrument (e.g. an LLM agent; the API below is kept small and stable):

    from cluster import telemetry

    # once per process (system actors, replicas and the API already do this):
    telemetry.setup_process(settings, "agent", redis_url=url)

    # a model call: a GenAI-conventions CLIENT span, its usage, and the token metrics
    with telemetry.llm_span("openai", model) as span:
        reply = await call_the_model(...)
        telemetry.llm_usage(span, input_tokens=n_in, output_tokens=n_out,
                            response_model=reply.model, finish_reasons=["stop"])
    telemetry.record_tokens("openai", model, tenant, n_in, n_out, cost_usd=cost)
    # (llm_span counts the call in dafnck_llm_calls_total, by outcome)

    # a tool call the model asked for
    with telemetry.tool_span("search"):
        ...

    # ids on every log line of the block (tenant, agent, execution_id, step_id, ...)
    with telemetry.log_context(agent=agent_id, execution_id=eid):
        log.info("thinking")

Spans nest through contextvars: inside a replica's task, `llm_span` is a child of the
task's span, which is a child of the traceparent the task carried. Metrics take only the
labels declared in `cluster.metrics` (bounded values: never task or execution ids).
"""

from __future__ import annotations

import logging

from cluster.logs import install as _install_logs
from cluster.logs import json_lines_in_worker, log_context
from cluster.metrics import LLM_CALLS, record_tokens
from cluster.redact import redact
from cluster.settings import Settings
from cluster.tracing import (
    current_traceparent,
    flush,
    llm_span,
    llm_usage,
    setup_tracing,
    span,
    tool_span,
)

log = logging.getLogger(__name__)


def setup_process(settings: Settings, service: str, *, redis_url: str | None = None) -> None:
    """Log context on every record and this process's tracer; safe to call again."""
    _install_logs()
    try:
        json_lines_in_worker(settings.log_level)
    except Exception:  # logging as before is better than no process
        log.warning("could not set up JSON logs", exc_info=True)
    try:
        setup_tracing(settings, service, redis_url=redis_url)
    except Exception:  # an exporter that cannot start must not stop the process
        log.warning("tracing is off: the %s exporter failed to start",
                    settings.trace_exporter, exc_info=True)  # fmt: skip


__all__ = [
    "LLM_CALLS",
    "current_traceparent",
    "flush",
    "llm_span",
    "llm_usage",
    "log_context",
    "record_tokens",
    "redact",
    "setup_process",
    "span",
    "tool_span",
]
