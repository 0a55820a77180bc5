"""Durable workflow state in Redis: versioned definitions, executions and their event streams.

An execution is a hash (`meta` plus one field per step) and a stream of events. Every
change is one MULTI/EXEC: the changed fields and the event that explains them land
together or not at all, so a supervisor killed at any moment leaves a state it can resume.
Arrow tables in step outputs are written as Parquet through `pyarrow.fs` (the store keeps
their URI), so they outlive the cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import redis

from cluster.errors import NotFound, StoreUnavailable
from cluster.store import Store, redacted, unavailable_as_error
from workflows.execution import Event, Execution, ExecutionStatus, StepState

#: Events kept per execution stream (approximately: Redis trims lazily).
MAX_EVENTS = 100_000
_ARROW = "$arrow"


class BlobStore:
    """Arrow tables as Parquet files under a local path or an S3/GCS URI."""

    def __init__(self, root: str) -> None:
        self.fs: pafs.FileSystem
        self.root: str
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), root

    def put(self, key: str, table: pa.Table) -> str:
        path = f"{self.root.rstrip('/')}/{key}.parquet"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=self.fs)
        return path

    def get(self, path: str) -> pa.Table:
        return pq.read_table(path, filesystem=self.fs)

    def encode(self, value: Any, key: str) -> Any:
        """`value` with each Arrow table replaced by `{"$arrow": path}`."""
        if isinstance(value, pa.Table):
            return {_ARROW: self.put(key, value)}
        if isinstance(value, dict):
            return {k: self.encode(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.encode(v, f"{key}.{i}") for i, v in enumerate(value)]
        return value

    def decode(self, value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_ARROW}:
                return self.get(value[_ARROW])
            return {k: self.decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        return value


#: Adds commands for one event to a pipeline (sync or asyncio) about to be executed.
Mirror = Callable[[Any, Event], None]


@dataclass
class Change:
    """What one commit writes for one execution: its meta, some steps, and events."""

    execution: Execution
    steps: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    meta: bool = False


class ExecutionStore:
    """Definitions and executions of one tenant."""

    def __init__(self, store: Store, blobs: BlobStore, mirror: Mirror | None = None) -> None:
        self.store = store
        self.blobs = blobs
        #: Stages each event into the same transaction elsewhere too (the event bus).
        self.mirror = mirror

    # -- definitions -------------------------------------------------------------

    @unavailable_as_error
    def define(self, name: str, spec_json: str) -> tuple[int, bool]:
        """Store a definition; the same text as the latest gives the latest version back.

        Returns (version, created).
        """
        key = self.store.key("wf", name)
        latest = self.store.redis.hget(key, "latest")
        if latest and self.store.redis.hget(key, f"v{latest}") == spec_json:
            return int(latest), False
        version = int(self.store.redis.hincrby(key, "counter", 1))
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={f"v{version}": spec_json, "latest": version})
        pipe.sadd(self.store.key("wfs"), name)
        pipe.execute()
        return version, True

    @unavailable_as_error
    def definition(self, name: str, version: int | None = None) -> tuple[int, str]:
        """Raises: NotFound."""
        key = self.store.key("wf", name)
        version = version or int(self.store.redis.hget(key, "latest") or 0)
        raw = self.store.redis.hget(key, f"v{version}") if version else None
        if raw is None:
            raise NotFound(
                f"workflow {name!r}"
                + (f" version {version}" if version else "")
                + " is not defined"
            )
        return version, str(raw)

    @unavailable_as_error
    def versions(self, name: str) -> list[int]:
        fields = self.store.redis.hkeys(self.store.key("wf", name))
        return sorted(int(f[1:]) for f in fields if f.startswith("v"))

    @unavailable_as_error
    def workflows(self) -> list[str]:
        return sorted(self.store.redis.smembers(self.store.key("wfs")))

    # -- executions --------------------------------------------------------------

    def _key(self, execution_id: str) -> str:
        return self.store.key("exec", execution_id)

    def events_key(self, execution_id: str) -> str:
        return self.store.key("exec", execution_id, "events")

    def encode_step(self, execution_id: str, step_id: str, state: StepState) -> str:
        data = state.model_dump(mode="python")
        data["output"] = self.blobs.encode(state.output, f"{execution_id}/{step_id}")
        return json.dumps(data, default=str)

    def commit(
        self,
        execution: Execution,
        *,
        steps: Iterable[str] = (),
        events: Iterable[Event] = (),
        meta: bool = True,
    ) -> None:
        """Write the execution's meta, the named steps and the events in one transaction."""
        self.commit_many([Change(execution, set(steps), list(events), meta)])

    @unavailable_as_error
    def commit_many(self, changes: Iterable[Change]) -> None:
        """Several changes, possibly of several executions, in one MULTI/EXEC."""
        pipe = self.store.redis.pipeline(transaction=True)
        for change in changes:
            self._stage(pipe, change)
        pipe.execute()

    async def commit_many_async(self, changes: Iterable[Change]) -> None:
        """`commit_many` without blocking the event loop while Redis syncs its AOF.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        pipe = self.store.async_redis().pipeline(transaction=True)
        for change in changes:
            self._stage(pipe, change)
        try:
            await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"Redis at {redacted(self.store.url)} is unreachable: {exc}"
            ) from None

    def _stage(self, pipe: Any, change: Change) -> None:
        execution = change.execution
        key = self._key(execution.id)
        fields = {
            f"step:{s}": self.encode_step(execution.id, s, execution.steps[s]) for s in change.steps
        }
        if change.meta:
            execution.updated_at = time.time()
            fields["meta"] = execution.model_dump_json(exclude={"steps"})
            active = self.store.key("execs", "active")
            (pipe.srem if execution.status.terminal else pipe.sadd)(active, execution.id)
            pipe.zadd(self.store.key("execs"), {execution.id: execution.created_at}, nx=True)
        if fields:
            pipe.hset(key, mapping=fields)
        stream = self.events_key(execution.id)
        for event in change.events:
            pipe.xadd(
                stream, {"event": event.model_dump_json()}, maxlen=MAX_EVENTS, approximate=True
            )
            if self.mirror is not None:
                self.mirror(pipe, event)

    @unavailable_as_error
    def load(self, execution_id: str) -> Execution:
        """Raises: NotFound."""
        raw = self.store.redis.hgetall(self._key(execution_id))
        if "meta" not in raw:
            raise NotFound(f"execution {execution_id!r} does not exist")
        execution = Execution.model_validate_json(raw["meta"])
        for name, value in raw.items():
            if name.startswith("step:"):
                state = StepState.model_validate_json(value)
                state.output = self.blobs.decode(state.output)
                execution.steps[name[5:]] = state
        return execution

    @unavailable_as_error
    def active(self) -> list[str]:
        return sorted(self.store.redis.smembers(self.store.key("execs", "active")))

    @unavailable_as_error
    def list_executions(
        self, limit: int = 50, status: ExecutionStatus | None = None
    ) -> list[Execution]:
        """The newest executions first (meta only)."""
        ids = self.store.redis.zrevrange(
            self.store.key("execs"), 0, limit * 4 if status else limit - 1
        )
        pipe = self.store.redis.pipeline(transaction=False)
        for execution_id in ids:
            pipe.hget(self._key(execution_id), "meta")
        metas = [Execution.model_validate_json(m) for m in pipe.execute() if m]
        return [e for e in metas if status is None or e.status == status][:limit]

    @unavailable_as_error
    def events(
        self, execution_id: str, after: str = "0-0", count: int = 1000, block_ms: int | None = None
    ) -> list[tuple[str, Event]]:
        """Events after the stream id `after`, waiting up to `block_ms` for new ones."""
        if block_ms is None:
            raw = self.store.redis.xrange(
                self.events_key(execution_id), min=f"({after}", count=count
            )
        else:
            got = self.store.redis.xread(
                {self.events_key(execution_id): after}, count=count, block=block_ms
            )
            raw = got[0][1] if got else []
        return [(event_id, Event.model_validate_json(fields["event"])) for event_id, fields in raw]
