"""Records of tasks submitted without waiting: one Redis hash per task, under the tenant.

`store.key("task", id)` holds `status` (pending, running, succeeded, failed, cancelled),
the task and its result as JSON, and timestamps; it expires a day after the last write so
nothing is kept forever. All methods are async (redis.asyncio) so the API's event loop
never blocks on them.

`store.key("tasks", "kept")` (a sorted set of ids scored by their expiry) counts the
records a tenant keeps against its `task_records` quota: a task past it is refused
before anything is recorded.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from actors.models import Task, TaskResult
from cluster.errors import Conflict, NotFound, QuotaExceeded
from cluster.quotas import Quotas
from cluster.store import Store

TaskStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
#: How long a record outlives its last change.
RECORD_TTL_S = 24 * 3600
_FINAL = frozenset({"succeeded", "failed", "cancelled"})
#: KEYS: kept set. ARGV: now, id, expiry, max. Returns 1 (counted) or 0 (full).
_KEEP_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
"""


class TaskRecords:
    """Create, finish, cancel and read task records of one tenant."""

    def __init__(self, store: Store, quotas: Quotas | None = None) -> None:
        self.store = store
        self.quotas = quotas or Quotas()

    def _key(self, task_id: str) -> str:
        return self.store.key("task", task_id)

    async def create(self, task: Task) -> None:
        """Record a task as pending.

        Raises: Conflict (the id is taken), QuotaExceeded (task_records).
        """
        redis = self.store.async_redis()
        now = str(time.time())
        key = self._key(task.id)
        await self._count(task.id)
        if not await redis.hsetnx(key, "status", "pending"):
            raise Conflict(f"task {task.id!r} already exists; submit with a new id")
        await redis.hset(
            key, mapping={"task": task.model_dump_json(), "created_at": now, "updated_at": now}
        )
        await redis.expire(key, RECORD_TTL_S)

    async def _count(self, task_id: str) -> None:
        now, most = time.time(), self.quotas.task_records
        script = self.store.async_redis().register_script(_KEEP_LUA)
        kept = self.store.key("tasks", "kept")
        if not int(await script(keys=[kept], args=[now, task_id, now + RECORD_TTL_S, most])):
            raise QuotaExceeded(
                "task_records",
                most,
                f"tenant {self.store.tenant!r} keeps {most} task records (each for a day); "
                "wait for results with ?wait=true instead",
            )

    async def set_running(self, task_id: str) -> None:
        await self._transition(task_id, "running", {})

    async def finish(self, task_id: str, result: TaskResult) -> None:
        """Store the result, unless the task was cancelled meanwhile (then it is dropped)."""
        await self._transition(task_id, result.status, {"result": result.model_dump_json()})

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Mark the task cancelled; its result, if it arrives, is discarded.

        Raises: NotFound, Conflict (the task has already ended).
        """
        record = await self.get(task_id)
        if record["status"] in _FINAL:
            raise Conflict(f"task {task_id!r} has already ended ({record['status']})")
        await self._transition(task_id, "cancelled", {})
        return await self.get(task_id)

    async def get(self, task_id: str) -> dict[str, Any]:
        """The record as the API shows it. Raises: NotFound (also for another tenant's id)."""
        raw = await self.store.async_redis().hgetall(self._key(task_id))
        if not raw or "task" not in raw:
            raise NotFound(f"task {task_id!r} not found")
        return {
            "id": task_id,
            "status": raw["status"],
            "task": json.loads(raw["task"]),
            "result": json.loads(raw["result"]) if raw.get("result") else None,
            "created_at": float(raw["created_at"]),
            "updated_at": float(raw["updated_at"]),
        }

    async def _transition(self, task_id: str, status: str, extra: dict[str, str]) -> None:
        """Set the status unless the record already ended, in one optimistic transaction."""
        redis = self.store.async_redis()
        key = self._key(task_id)
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            current = await pipe.hget(key, "status")
            if current is None or current in _FINAL:
                return
            pipe.multi()
            pipe.hset(key, mapping={"status": status, "updated_at": str(time.time()), **extra})
            pipe.expire(key, RECORD_TTL_S)
            await pipe.execute()


__all__ = ["RECORD_TTL_S", "TaskRecords", "TaskStatus"]
