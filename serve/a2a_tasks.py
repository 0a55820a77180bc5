"""The a2a-sdk's `TaskStore` on Redis: A2A tasks of one published agent of one tenant.

Each task is its protobuf JSON under `a2a:<agent>:task:<id>` with a sorted set of ids by
time for listing; both expire a day after the last write, as HTTP task records do. Every
API replica reads the same store, so `GetTask` answers wherever the task ran.
"""

from __future__ import annotations

import time

from a2a.server.context import ServerCallContext
from a2a.server.tasks import TaskStore
from a2a.types.a2a_pb2 import ListTasksRequest, ListTasksResponse, Task
from google.protobuf.json_format import MessageToJson, Parse

from cluster.store import Store

#: How long an A2A task outlives its last change.
TASK_TTL_S = 24 * 3600
#: Page size of `ListTasks` when the request names none.
DEFAULT_PAGE = 50


class RedisTaskStore(TaskStore):
    """A2A tasks of `agent` in the tenant's store."""

    def __init__(self, store: Store, agent: str) -> None:
        self.store = store
        self.agent = agent

    def _key(self, task_id: str) -> str:
        return self.store.key("a2a", self.agent, "task", task_id)

    def _index(self) -> str:
        return self.store.key("a2a", self.agent, "tasks")

    async def save(self, task: Task, context: ServerCallContext) -> None:
        pipe = self.store.async_redis().pipeline(transaction=True)
        pipe.set(self._key(task.id), MessageToJson(task), ex=TASK_TTL_S)
        pipe.zadd(self._index(), {task.id: time.time()})
        pipe.expire(self._index(), TASK_TTL_S)
        await pipe.execute()

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        raw = await self.store.async_redis().get(self._key(task_id))
        return Parse(raw, Task()) if raw else None

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """The newest tasks first, filtered by context id and state (one page, no token)."""
        redis = self.store.async_redis()
        size = params.page_size or DEFAULT_PAGE
        ids = await redis.zrevrange(self._index(), 0, size * 4 - 1)
        raws = await redis.mget([self._key(i) for i in ids]) if ids else []
        tasks = [Parse(raw, Task()) for raw in raws if raw]
        tasks = [
            t
            for t in tasks
            if (not params.context_id or t.context_id == params.context_id)
            and (not params.status or t.status.state == params.status)
        ][:size]
        return ListTasksResponse(tasks=tasks, page_size=size, total_size=len(tasks))

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        pipe = self.store.async_redis().pipeline(transaction=True)
        pipe.delete(self._key(task_id))
        pipe.zrem(self._index(), task_id)
        await pipe.execute()
