"""The journal of one LLM task in Redis: its tool calls and its model replies, and the
leases that let only one runner at a time make a given call.

Tool calls live in one hash per (scope, step): field call id -> JSON entry whose status is
`started`, `succeeded`, `failed` or `may_have_run`. Model replies live in one hash per
(scope, step, attempt): field turn -> the reply. The scope is the execution id (or
`task:<id>` outside a workflow). A lease is a key set with NX and a short expiry that its
holder refreshes while the call runs, so a duplicate runner (the same step dispatched
again after a supervisor restart) waits for the holder's answer instead of paying for it
again, and a runner that died lets go within `LEASE_TTL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cluster.store import Store

#: A lease not refreshed for this long belongs to a runner that died.
LEASE_TTL_S = 5.0
#: How often a waiting runner looks again for the holder's answer.
POLL_S = 0.05
#: Journals outlive the execution by this long, so a late retry still finds them.
JOURNAL_TTL_S = 7 * 24 * 3600

_RELEASE_LUA = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
_REFRESH_LUA = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


def dumps(value: Any) -> str:
    """JSON for the journal; what cannot be JSON becomes its `str`, the same on every replay."""
    return json.dumps(value, default=str, separators=(",", ":"))


class Journal:
    """Tool calls and model replies of one step attempt of one task."""

    def __init__(self, store: Store, scope: str, step: str, attempt: int) -> None:
        self.store = store
        self.calls_key = store.key("llm", "journal", scope, step)
        self.replies_key = store.key("llm", "replies", scope, step, str(attempt))
        self._lease_prefix = store.key("llm", "lease", scope, step)
        self.owner = uuid.uuid4().hex

    def _redis(self) -> Any:
        return self.store.async_redis()

    # -- model replies --------------------------------------------------------------------

    async def reply(self, turn: int) -> dict[str, Any] | None:
        raw = await self._redis().hget(self.replies_key, str(turn))
        return json.loads(raw) if raw else None

    def save_reply(self, pipe: Any, turn: int, reply: dict[str, Any]) -> None:
        """Queue the reply on `pipe` (the MULTI that also counts its cost)."""
        pipe.hset(self.replies_key, str(turn), dumps(reply))
        pipe.expire(self.replies_key, JOURNAL_TTL_S)

    # -- tool calls -----------------------------------------------------------------------

    async def call(self, call_id: str) -> dict[str, Any] | None:
        raw = await self._redis().hget(self.calls_key, call_id)
        return json.loads(raw) if raw else None

    async def record(self, call_id: str, entry: dict[str, Any], release: str | None = None) -> None:
        """Write the call's entry (and, in the same MULTI, let go of the lease `release`)."""
        pipe = self._redis().pipeline(transaction=True)
        pipe.hset(self.calls_key, call_id, dumps({**entry, "at": time.time()}))
        pipe.expire(self.calls_key, JOURNAL_TTL_S)
        if release is not None:
            self.release_in(pipe, release)
        await pipe.execute()

    async def calls(self) -> dict[str, dict[str, Any]]:
        """Every journalled tool call of the step, by call id."""
        raw = await self._redis().hgetall(self.calls_key)
        return {call_id: json.loads(entry) for call_id, entry in raw.items()}

    # -- leases ---------------------------------------------------------------------------

    def lease_key(self, name: str) -> str:
        return f"{self._lease_prefix}:{name}"

    async def lease_held(self, name: str) -> bool:
        return bool(await self._redis().exists(self.lease_key(name)))

    def release_in(self, pipe: Any, name: str) -> None:
        """Queue letting go of our lease on `pipe`, so the answer and the release are one
        write (with `appendfsync always` every write is a disk flush)."""
        pipe.eval(_RELEASE_LUA, 1, self.lease_key(name), self.owner)

    @contextlib.asynccontextmanager
    async def lease(self, name: str, done: Callable[[], Awaitable[bool]]) -> AsyncIterator[bool]:
        """Hold the lease `name` while the body runs, refreshing it; yields True when held.

        While another runner holds it, waits until `done()` says that runner's answer is
        in (yields False: read the answer) or its lease lapses (then takes it over).
        """
        key, redis = self.lease_key(name), self._redis()
        ttl_ms = int(LEASE_TTL_S * 1000)
        while not await redis.set(key, self.owner, nx=True, px=ttl_ms):
            if await done():
                yield False
                return
            await asyncio.sleep(POLL_S)
        refresher = asyncio.get_running_loop().create_task(self._refresh(key, ttl_ms))
        try:
            yield True
        finally:
            refresher.cancel()
            with contextlib.suppress(Exception):  # an unreleased lease lapses by itself
                await redis.eval(_RELEASE_LUA, 1, key, self.owner)

    async def _refresh(self, key: str, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL_S / 3)
            with contextlib.suppress(Exception):  # a missed refresh is retried next time
                await self._redis().eval(_REFRESH_LUA, 1, key, self.owner, ttl_ms)


def execution_tool_calls(store: Store, execution_id: str) -> dict[str, dict[str, Any]]:
    """Every journalled tool call of an execution, by step then call id (for operators:
    a call marked `may_have_run` is one whose effect a person should check)."""
    prefix = store.key("llm", "journal", execution_id, "")
    found: dict[str, dict[str, Any]] = {}
    for key in store.call(lambda: list(store.redis.scan_iter(match=f"{prefix}*", count=500))):
        raw = store.call(store.redis.hgetall, key)
        found[key[len(prefix) :]] = {call: json.loads(entry) for call, entry in raw.items()}
    return dict(sorted(found.items()))


__all__ = ["JOURNAL_TTL_S", "LEASE_TTL_S", "Journal", "dumps", "execution_tool_calls"]
