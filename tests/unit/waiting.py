"""Waiting on a condition in unit tests, never for a fixed time: poll with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(condition: Callable[[], object], timeout_s: float = 5.0, what: str = "") -> None:
    """Return once `condition()` is truthy; fail after `timeout_s` naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what or 'condition'} not met within {timeout_s}s"
        await asyncio.sleep(0.01)


async def until_some(
    produce: Callable[[], Awaitable[T]], timeout_s: float = 5.0, what: str = ""
) -> T:
    """Await `produce()` again and again until it gives something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while not (value := await produce()):
        assert time.monotonic() < deadline, f"{what or 'a value'} not within {timeout_s}s"
        await asyncio.sleep(0.01)
    return value


async def idle_past(redis: object, stream: str, group: str, idle_ms: int) -> None:
    """Return once every pending entry of `group` on `stream` has been idle `idle_ms` by the
    server's clock (the one XAUTOCLAIM goes by); fail after five seconds."""
    deadline = time.monotonic() + 5
    while True:
        pending = redis.xpending_range(stream, group, "-", "+", 100)  # type: ignore[attr-defined]
        if all(p["time_since_delivered"] >= idle_ms for p in pending):
            return
        assert time.monotonic() < deadline, f"not idle {idle_ms} ms: {pending}"
        await asyncio.sleep(0.01)
