"""The two kinds of pydantic model every package builds on, and the shapes of ids.

`Contract` is what people write (HTTP bodies, `configs/*.yaml`): frozen, unknown fields
refused. `Record` is what Redis keeps: unknown fields tolerated, so a rolling upgrade can
read what a newer or older version wrote. The id patterns are written here once; models,
routes (`serve.patterns` re-exports them) and stores check ids against the same ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

# Ids become parts of Redis keys (`exec:<id>`): none of these admits `:` or a space.
#: A tenant (namespace): part of every key it owns and of its Redis ACL user.
TENANT = r"^[a-z0-9][a-z0-9_-]{0,62}$"
#: An agent's or a workflow's name.
NAME = r"^[a-z][a-z0-9-]{0,62}$"
#: A capability: dotted lower-case words (`code.review`).
CAPABILITY = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$"
#: An id the platform makes (executions, channels: `uuid4().hex`) or a caller gives it.
ID = r"^[A-Za-z0-9_-]{1,64}$"
#: A task's id (a caller's own may carry `.` and `:`; it is never a key by itself).
TASK_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
#: A Redis stream id (`<ms>-<seq>`), each part below 2^64 (19 digits at most).
STREAM_ID = r"^\d{1,19}-\d{1,19}$"
#: A topic's or a queue's name (no `:`, so it cannot collide with the keys made from it).
TOPIC = r"^[a-z0-9][a-z0-9_.-]{0,127}$"


class Contract(BaseModel):
    """What people write: frozen, unknown fields refused; a field with an alias (`with`,
    `as`) is read by either name and written by its alias."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True
    )


class Record(BaseModel):
    """What Redis keeps: frozen, unknown fields tolerated."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def lazy_exports(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` that imports each public name from its module on first use,
    so importing one submodule (as an agent replica does) does not load the whole package."""

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name]), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
