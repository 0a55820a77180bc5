"""Keep secrets (LLM API keys above all) out of logs, errors and anything we store or show.

Two nets: the exact values a process resolved as secrets (`register_secret`, called where
a key is read from its env var or file), and patterns of what keys look like (bearer
tokens, `sk-...` keys, `api_key=...`). `install()` makes every log record of the process
pass through `redact` — its message and its traceback — before any handler sees it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "[REDACTED]"
#: Shorter values are too likely to occur by chance to be replaced everywhere.
_MIN_SECRET_LEN = 8

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{MASK}"),
    (re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{12,}"), MASK),
    (
        re.compile(
            r"(?i)((?:api[_-]?key|x-api-key|authorization|client[_-]?secret|password)"
            r"[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])[^\s\"',;}]{8,}"
        ),
        rf"\1{MASK}",
    ),
]


def register_secret(value: str | None) -> None:
    """Remember a secret this process holds, so `redact` removes it wherever it appears."""
    if value and len(value.strip()) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value.strip())


def redact(text: str) -> str:
    """`text` with every registered secret and everything shaped like a key masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any) -> Any:
    """`redact` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is the logging module's to report, not ours
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install() -> None:
    """Redact every log record this process creates from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)


__all__ = ["MASK", "install", "redact", "redact_value", "register_secret"]
