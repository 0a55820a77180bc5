"""Durable workflow state in Redis: versioned definitions, executions and their event streams.

An execution is a hash (`meta` plus one field per step) and a stream of events, indexed
by `execs` (a sorted set by creation time), `execs:active` (the set of those not ended) and
`execs:ended` (a sorted set by end time, which retention purges from). Every
change is one MULTI/EXEC: the changed fields and the event that explains them land
together or not at all, so a supervisor killed at any moment leaves a state it can resume.

Arrow tables in step outputs are written as Parquet through `pyarrow.fs` under the
tenant's own directory, `<blobs>/<tenant>/outputs/<execution>/<step>/<n>.parquet`, so they
outlive the cluster. The stored step keeps its output with `null` where each table was
and, beside it (out of band, where no agent's data can reach), `output_blobs`: the path
of each table in the output and its key relative to that directory. Nothing inside an
output is ever read as a reference: `{"$arrow": "/some/file"}` returned by an agent stays
that dict. Steps stored before this layout kept `{"$arrow": <absolute path>}` inside the
output; such a marker is no longer trusted and loads as the plain dict it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from cluster.blobs import BlobDir, segment
from cluster.errors import Conflict, DafnckError, NotFound, StoreUnavailable
from cluster.store import Store, redacted, unavailable_as_error
from workflows.execution import Event, Execution, ExecutionStatus, StepState

#: Events kept per execution stream (approximately: Redis trims lazily).
MAX_EVENTS = 100_000
#: The stored step's field listing its output's tables: `[[path, key], ...]`, where a path
#: is the list of dict keys and list indexes leading to the table inside the output.
BLOBS_FIELD = "output_blobs"
BlobPath = list[str | int]


class BlobStore:
    """Arrow tables as Parquet files under a directory (a local path or an S3/GCS URI).

    Built on the platform's blob root; `ExecutionStore` scopes it to the tenant's
    `<root>/<tenant>/outputs`. Keys are relative to the directory and checked on each use.
    """

    def __init__(self, root: str, *parts: str) -> None:
        self.root, self.parts = root, parts
        self.dir = BlobDir(root, *parts)

    def scoped(self, *parts: str) -> BlobStore:
        """The directory `parts` below this one. Raises: InputInvalid (a bad part)."""
        return BlobStore(self.root, *self.parts, *parts)

    def put(self, key: str, table: pa.Table) -> str:
        """Write the table as `<key>.parquet`; returns the key kept for it."""
        key = f"{key}.parquet"
        path = self.dir.path_of(key)
        self.dir.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=self.dir.fs)
        return key

    def get(self, key: str) -> pa.Table:
        """Raises: InputInvalid (a key that is not relative), FileNotFoundError."""
        return pq.read_table(self.dir.path_of(key), filesystem=self.dir.fs)


def _json_key(key: Any) -> str:
    """A dict key as JSON writes it (1 -> "1", True -> "true")."""
    return key if isinstance(key, str) else json.dumps(key) if _scalar(key) else str(key)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float)


def lift_tables(value: Any, path: tuple[str | int, ...], found: list[tuple[BlobPath, Any]]) -> Any:
    """`value` with each Arrow table replaced by None, and (its path, the table) in `found`."""
    if isinstance(value, pa.Table):
        found.append((list(path), value))
        return None
    if isinstance(value, dict):
        return {
            _json_key(k): lift_tables(v, (*path, _json_key(k)), found) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [lift_tables(v, (*path, i), found) for i, v in enumerate(value)]
    return value


def place_table(output: Any, path: Any, table: pa.Table) -> Any:
    """`output` with `table` at `path`, which must lead to a None the store left there.

    Raises: ValueError (the path does not lead to such a slot).
    """
    if not isinstance(path, list) or _child_of(output, path) is not None:
        raise ValueError(f"path {path!r} does not lead to an emptied slot of the output")
    if not path:
        return table
    _child_of(output, path[:-1])[path[-1]] = table
    return output


def _child_of(value: Any, path: list[Any]) -> Any:
    for step in path:
        if not _has(value, step):
            raise ValueError(f"{step!r} is not a key of the output's {type(value).__name__}")
        value = value[step]
    return value


def _has(value: Any, step: Any) -> bool:
    if isinstance(value, dict):
        return isinstance(step, str) and step in value
    return isinstance(value, list) and type(step) is int and 0 <= step < len(value)


#: The directory (under the execution's) holding the tables of the workflow's outputs; no
#: step id starts with "_".
OUTPUTS_DIR = "_outputs"


class Unstorable(DafnckError):
    """A value of an execution (a step's output, the workflow's outputs) cannot be stored."""

    def __init__(self, execution_id: str, step_id: str | None, reason: str) -> None:
        super().__init__(execution_id, step_id, reason)

    @property
    def execution_id(self) -> str:
        return str(self.args[0])

    @property
    def step_id(self) -> str | None:
        return self.args[1]  # type: ignore[no-any-return]

    @property
    def message(self) -> str:
        what = f"step {self.step_id!r}" if self.step_id else "the execution's record"
        return f"{what} of execution {self.execution_id} cannot be stored: {self.args[2]}"


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"


#: Adds commands for one event to a pipeline (sync or asyncio) about to be executed.
Mirror = Callable[[Any, Event], None]


@dataclass
class Change:
    """What one commit writes for one execution: its meta, some steps, and events."""

    execution: Execution
    steps: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    meta: bool = False


@dataclass
class Encoded:
    """A change serialised and ready to be staged: hash fields and event texts."""

    change: Change
    fields: dict[str, str]
    events: list[str]


class ExecutionStore:
    """Definitions and executions of one tenant."""

    def __init__(self, store: Store, blobs: BlobStore, mirror: Mirror | None = None) -> None:
        """`blobs` is the platform's blob root: tables go under `<root>/<tenant>/outputs`."""
        self.store = store
        self.blobs = blobs.scoped(store.tenant, "outputs")
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
        """The step as stored: its output's tables written as Parquet and listed beside it."""
        data = state.model_dump(mode="python")
        tables: list[tuple[BlobPath, Any]] = []
        data["output"] = lift_tables(state.output, (), tables)
        if tables:
            where = f"{segment(execution_id)}/{segment(step_id)}"
            data[BLOBS_FIELD] = [
                [path, self.blobs.put(f"{where}/{i}", table)]
                for i, (path, table) in enumerate(tables)
            ]
        return json.dumps(data, default=str)

    def decode_step(self, execution_id: str, step_id: str, raw: str) -> StepState:
        """A stored step with its output's tables read back from the tenant's outputs.

        Raises: NotFound (a table's file is gone), Conflict (a malformed table reference).
        """
        record = json.loads(raw)
        refs = record.pop(BLOBS_FIELD, None) or []
        state = StepState.model_validate(record)
        for ref in refs:
            state.output = self._attach(execution_id, step_id, state.output, ref)
        return state

    def _attach(self, execution_id: str, step_id: str, output: Any, ref: Any) -> Any:
        what = f"execution {execution_id!r} step {step_id!r}"
        try:
            path, key = ref
            return place_table(output, path, self.blobs.get(str(key)))
        except FileNotFoundError:
            raise NotFound(
                f"{what}: its output table {key!r} is missing under {self.blobs.dir.uri}"
            ) from None
        except (ValueError, TypeError, DafnckError) as exc:
            raise Conflict(f"{what}: output table reference {ref!r} is refused: {exc}") from None

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
            StoreUnavailable: Redis cannot be reached. Unstorable: a value cannot be written.
        """
        await self.write_async([self.encode(change) for change in changes])

    def _stage(self, pipe: Any, change: Change) -> None:
        self.apply(pipe, self.encode(change))

    def encode(self, change: Change) -> Encoded:
        """The change as it will be written: steps and meta serialised, tables stored.

        Raises:
            Unstorable: a value of the change cannot be serialised (naming which).
        """
        execution = change.execution
        fields = {}
        for step_id in sorted(change.steps):
            try:
                fields[f"step:{step_id}"] = self.encode_step(
                    execution.id, step_id, execution.steps[step_id]
                )
            except Exception as exc:
                raise Unstorable(execution.id, step_id, _reason(exc)) from exc
        if change.meta:
            execution.updated_at = time.time()
            try:
                fields["meta"] = self.encode_meta(execution)
            except Exception as exc:
                raise Unstorable(execution.id, None, _reason(exc)) from exc
        try:
            events = [event.model_dump_json() for event in change.events]
        except Exception as exc:
            raise Unstorable(execution.id, None, _reason(exc)) from exc
        return Encoded(change, fields, events)

    def encode_meta(self, execution: Execution) -> str:
        """The execution's meta as stored: its outputs' tables written as Parquet (under
        `<execution>/_outputs/`, a name no step id can take) and listed beside them."""
        tables: list[tuple[BlobPath, Any]] = []
        outputs = lift_tables(execution.outputs, (), tables)
        data = json.loads(
            execution.model_copy(update={"outputs": outputs}).model_dump_json(exclude={"steps"})
        )
        if tables:
            where = f"{segment(execution.id)}/{OUTPUTS_DIR}"
            data[BLOBS_FIELD] = [
                [path, self.blobs.put(f"{where}/{i}", table)]
                for i, (path, table) in enumerate(tables)
            ]
        return json.dumps(data)

    def decode_meta(self, raw: str) -> Execution:
        """A stored meta with its outputs' tables read back. Raises: NotFound, Conflict."""
        record = json.loads(raw)
        refs = record.pop(BLOBS_FIELD, None) or []
        execution = Execution.model_validate(record)
        for ref in refs:
            execution.outputs = self._attach(execution.id, "outputs", execution.outputs, ref)
        return execution

    def apply(self, pipe: Any, encoded: Encoded) -> None:
        """Add an encoded change's commands to `pipe` (which cannot fail half-way)."""
        execution = encoded.change.execution
        if encoded.change.meta:
            active = self.store.key("execs", "active")
            (pipe.srem if execution.status.terminal else pipe.sadd)(active, execution.id)
            pipe.zadd(self.store.key("execs"), {execution.id: execution.created_at}, nx=True)
            ended = self.store.key("execs", "ended")  # by end time: what retention purges
            if execution.status.terminal:
                pipe.zadd(ended, {execution.id: execution.updated_at})
            else:
                pipe.zrem(ended, execution.id)  # retried: alive again
        if encoded.fields:
            pipe.hset(self._key(execution.id), mapping=encoded.fields)
        stream = self.events_key(execution.id)
        for event, text in zip(encoded.change.events, encoded.events, strict=True):
            pipe.xadd(stream, {"event": text}, maxlen=MAX_EVENTS, approximate=True)
            if self.mirror is not None:
                self.mirror(pipe, event)

    async def write_async(self, encoded: Iterable[Encoded]) -> None:
        """Encoded changes in one MULTI/EXEC, without blocking the event loop.

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        pipe = self.store.async_redis().pipeline(transaction=True)
        for item in encoded:
            self.apply(pipe, item)
        try:
            await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"Redis at {redacted(self.store.url)} is unreachable: {exc}"
            ) from None

    @unavailable_as_error
    def load(self, execution_id: str) -> Execution:
        """Raises: NotFound."""
        raw = self.store.redis.hgetall(self._key(execution_id))
        if "meta" not in raw:
            raise NotFound(f"execution {execution_id!r} does not exist")
        execution = self.decode_meta(raw["meta"])
        for name, value in raw.items():
            if name.startswith("step:"):
                execution.steps[name[5:]] = self.decode_step(execution_id, name[5:], value)
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
