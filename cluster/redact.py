"""Keep secrets (LLM API keys above all) out of logs, errors and whatever is stored or shown.

Two nets: the exact values this process resolved as secrets (`register_secret`, called
where a key is read from its env var or file), and the patterns of what credentials look
like (bearer tokens, `sk-...` keys, `api_key=...`). Every log record
passes through both (`cluster.logs.install`, set up in every process by
`telemetry.setup_process`); errors built from a provider's answer call `redact` first.
"""

from __future__ import annotations

import re
import threading
from typing import Any

MASK = "***"
#: Shorter values are too likely to occur by chance to be replaced everywhere.
_MIN_SECRET_LEN = 8

#: Secrets that may slip into a message: our API keys, bearer tokens, provider keys,
#: passwords in URLs and `key=value` pairs.
_SECRETS = [
    (re.compile(r"\bdk_[A-Za-z0-9]+_[A-Za-z0-9_-]{8,}"), "dk_***"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/-]{8,}=*"), r"\1 ***"),
    (re.compile(r"\bsk-(?:ant-)?[A-Za-z0-9_-]{10,}"), "sk-***"),
    (re.compile(r"(://[^:/@\s]*:)[^@\s]+@"), r"\1***@"),
    (
        re.compile(r"(?i)\b(password|passwd|secret|api[_-]?key|token|authorization)"
                   r"(\s*[=:]\s*)(['\"]?)[^\s'\",;]+"),
        r"\1\2\3***",
    ),
]  # fmt: skip

_secrets: tuple[str, ...] = ()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret this process holds, so `redact` removes it wherever it appears."""
    global _secrets
    value = (value or "").strip()
    if len(value) >= _MIN_SECRET_LEN and value not in _secrets:
        with _lock:
            _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def mask_registered(text: str) -> str:
    """`text` with every registered secret replaced by `MASK` (longest first)."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact(text: str) -> str:
    """`text` with every registered secret and everything shaped like a credential masked."""
    text = mask_registered(text)
    for pattern, replacement in _SECRETS:
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


__all__ = ["MASK", "mask_registered", "redact", "redact_value", "register_secret"]
