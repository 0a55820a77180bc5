"""The shapes of ids and cursors the API takes, checked at the edge (REST and gRPC alike).

Ids become parts of Redis keys (`exec:<id>`), so an id with `:` could name another key of
the tenant (`exec:<id>:events`, a stream, read as a hash: WRONGTYPE); a stream id's parts
are 64-bit numbers in Redis, so a longer one is refused here instead of by Redis. The ids
every layer shares (`ID`, `TASK_ID`, `STREAM_ID`) are written once in `cluster.contracts`.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from actors.messages import EVENT_TYPE
from actors.models import DiscoveryCriteria
from cluster.contracts import ID, STREAM_ID, TASK_ID
from cluster.errors import InputInvalid

#: An agent's name, optionally `@<version range>` (as `Client.agents.scale` takes it).
AGENT_REF = r"^[a-z][a-z0-9-]{0,62}(@[\x21-\x7e]{1,100})?$"
#: A step id, or one item of a for_each step (`analyse[3]`).
STEP_KEY = r"^[a-z][a-z0-9_]*(\[\d+\])?$"
#: The largest millisecond time a stream id holds.
MAX_STREAM_MS = 2**64 - 1

_STREAM_ID = re.compile(STREAM_ID)


def is_stream_id(text: str) -> bool:
    return bool(_STREAM_ID.match(text))


def check(value: str, pattern: str, field: str, what: str = "request") -> str:
    """`value` when it matches `pattern`. Raises: InputInvalid naming `field`."""
    if not re.match(pattern, value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise InputInvalid(what, [f"{field}: {shown!r} does not match {pattern}"])
    return value


def check_agent_ref(value: str, field: str, what: str = "request") -> str:
    """`value` when it is an agent id, a name or `name@<version range>` whose range parses
    (as `AgentRegistry.resolve` reads it). Raises: InputInvalid naming `field`."""
    check(value, AGENT_REF, field, what)
    name, _, version = value.partition("@")
    try:
        DiscoveryCriteria(name=name, version=version or None)
    except ValidationError as exc:
        problems = [f"{field}: {e['msg']}" for e in exc.errors()]
        raise InputInvalid(what, problems) from None
    return value


__all__ = [
    "AGENT_REF",
    "EVENT_TYPE",
    "ID",
    "MAX_STREAM_MS",
    "STEP_KEY",
    "STREAM_ID",
    "TASK_ID",
    "check",
    "check_agent_ref",
    "is_stream_id",
]
