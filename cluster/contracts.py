"""The two kinds of pydantic model every package builds on.

`Contract` is what people write (HTTP bodies, `configs/*.yaml`): frozen, unknown fields
refused. `Record` is what Redis keeps: unknown fields tolerated, so a rolling upgrade can
read what a newer or older version wrote.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """What people write: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
