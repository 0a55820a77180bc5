"""Log context and redaction: every record carries the ids of the work it belongs to.

`log_context(tenant=..., execution_id=...)` sets ids for the block (contextvars, so each
asyncio task keeps its own); `install()` adds a record factory that copies them onto
every `LogRecord`, with the current trace and span ids, and redacts secrets from the
message (`cluster.redact`). Ray's JSON formatter (`LoggingConfig(encoding="JSON")`, Serve's
`logging_config`) writes every non-standard record attribute as a field, so the ids
appear in each JSON line of the replica's log file without any formatter of ours.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from cluster.redact import redact

#: The ids a record may carry (`extra=` uses the same names).
FIELDS = ("request_id", "tenant", "agent", "replica", "workflow", "execution_id", "step_id",
          "task_id")  # fmt: skip
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "dafnck_log_context", default=None
)


def current() -> dict[str, str]:
    return _context.get() or {}


def push(**ids: str | None) -> contextvars.Token[dict[str, str] | None]:
    """`log_context` without a generator, for hot paths: undo it with `pop(token)`."""
    return _context.set({**current(), **{k: v for k, v in ids.items() if v}})


def pop(token: contextvars.Token[dict[str, str] | None]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Add ids (None values are ignored) to every record logged in the block."""
    merged = {**current(), **{k: v for k, v in ids.items() if v}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


_installed = False


def install() -> None:
    """Wrap the record factory once per process: context ids, trace ids, redaction."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for key, value in current().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        _add_trace(record)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)


def json_lines_in_worker(level: str = "INFO") -> None:
    """In a Ray worker whose job set no `LoggingConfig`, log JSON lines as one would have.

    Ray's JSON formatter and its context filter (job, worker, actor, task ids) write to
    stderr, which Ray keeps in the worker's `.err` file; `dafnck executions logs` reads them.
    """
    import ray

    root = logging.getLogger()
    if root.handlers or not ray.is_initialized():
        return
    if ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return
    from ray._common.filters import CoreContextFilter
    from ray._common.formatters import JSONFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    handler.addFilter(CoreContextFilter())
    root.addHandler(handler)
    root.setLevel(level)


def _add_trace(record: logging.LogRecord) -> None:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        record.trace_id = f"{ctx.trace_id:032x}"
        record.span_id = f"{ctx.span_id:016x}"


def _redact_record(record: logging.LogRecord) -> None:
    if record.name.startswith("ray"):
        return  # Ray's own lines carry no credentials of ours; keep them cheap
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is logging's problem to report, not ours
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        # A traceback quotes the exception's message, which may carry what a server echoed.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))


__all__ = [
    "FIELDS",
    "current",
    "install",
    "json_lines_in_worker",
    "log_context",
    "pop",
    "push",
]
