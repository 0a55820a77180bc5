"""Retention: how long a tenant keeps finished executions, task records, messages and
usage, and the deletion of what is past it (the supervisor's sweep, `dafnck executions
purge`, `POST /v1/executions/purge`).

An execution is purged whole: its hash `exec:<id>`, its event stream, its place in the
`execs`, `execs:ended` and `execs:active` indexes, its webhook record, its spans
(`trace-index:<id>` and the traces listed there), its LLM journals, reply caches and
leases (`llm:{journal,replies,lease}:<id>:...`) and its Arrow outputs under
`<blobs>/<tenant>/outputs/<id>/`. Its LLM usage hash is kept until `usage_days` after
the execution ended (then it goes, or it is deleted at once when that is already past).
The status is checked inside the Lua script that deletes, so an execution that is
pending, running, paused or waiting for an approval (or was retried a moment ago) is
never purged. Tenant totals of usage (`llm:usage`, per workflow) are running sums: kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError, model_validator

from cluster.blobs import BlobDir, segment

if TYPE_CHECKING:
    from cluster.store import Store

log = logging.getLogger(__name__)

DAY = 86_400.0
#: The statuses an execution may be purged in; every other one is still alive.
TERMINAL = ("succeeded", "failed", "cancelled")
#: Message streams trimmed by age: `<kind>:...` under the tenant (and their dead letters).
#: Work queues (`queue:`) are not: an entry there is work not yet done.
MESSAGE_KINDS = frozenset({"inbox", "topic", "channel", "events"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}


class Retention(BaseModel):
    """Every tenant's retention; `tenants` sets other values for named tenants.

    A `None` keeps that kind of data forever.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Finished executions (with their events, outputs, blobs, journals and spans), counted
    #: from when they ended.
    executions_days: float | None = Field(default=30, gt=0)
    #: Finished task records. Records expire a day after their last write anyway, so this
    #: can only shorten that.
    task_records_days: float = Field(default=1, gt=0, le=1)
    #: Entries of message streams (inboxes, topics, channels, the event bus, dead letters).
    messages_days: float | None = Field(default=14, gt=0)
    #: An execution's LLM usage (tokens, cost), counted from when the execution ended.
    usage_days: float | None = Field(default=400, gt=0)
    #: How often the supervisor sweeps, and how many executions one Redis call deletes.
    sweep_interval_s: float = Field(default=600, ge=1)
    batch: int = Field(default=200, ge=1, le=5_000)
    #: Per-tenant values: {"acme": {"executions_days": 90}}.
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_tenants(self) -> Retention:
        for name in self.tenants:
            self.for_tenant(name)
        return self

    def for_tenant(self, tenant: str) -> Retention:
        """The retention that applies to `tenant`.

        Raises: ValueError (through pydantic) when an override names no setting.
        """
        override = self.tenants.get(tenant)
        if not override:
            return self
        if "tenants" in override:
            raise ValueError(f"retention.tenants.{tenant}: 'tenants' cannot be nested")
        try:
            return Retention.model_validate({**self.model_dump(exclude={"tenants"}), **override})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"retention.tenants.{tenant}: {problems}") from None


#: As JSON text in `mode="json"` dumps, so `DAFNCK_RETENTION` made from one parses back.
retention_as_json = PlainSerializer(lambda r: r.model_dump_json(), when_used="json")


def parse_duration(text: str) -> float:
    """Seconds in "90", "45s", "30m", "12h", "7d" or "2w".

    Raises: ValueError naming the expected form.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a number and s, m, h, d or w (7d)")
    return float(match[1]) * _UNITS[match[2]]


def check_statuses(statuses: Iterable[str]) -> tuple[str, ...]:
    """Raises: ValueError when a status is not one an execution may be purged in."""
    chosen = tuple(dict.fromkeys(s.strip() for s in statuses if s.strip()))
    wrong = [s for s in chosen if s not in TERMINAL]
    if wrong or not chosen:
        raise ValueError(
            f"statuses {wrong or 'none'} cannot be purged: choose among {', '.join(TERMINAL)}"
        )
    return chosen


def select_expired(
    metas: dict[str, dict[str, Any] | None],
    cutoff: float,
    statuses: Collection[str] = TERMINAL,
    busy: Collection[str] = (),
) -> list[str]:
    """The ids among `metas` (id -> execution meta, None when gone) to purge: ended in one
    of `statuses` before `cutoff` and not among `busy` (runs the engine holds). Gone ones
    are included, so their index entries are dropped."""
    chosen = []
    for execution_id, meta in metas.items():
        if execution_id in busy:
            continue
        if meta is None:
            chosen.append(execution_id)
            continue
        status, ended = meta.get("status"), float(meta.get("updated_at") or 0)
        if status in TERMINAL and status in statuses and ended < cutoff:
            chosen.append(execution_id)
    return chosen


#: ARGV: prefix, now, usage seconds (-1: forever), statuses (comma separated), cutoff
#: ("": any age), then the ids. Returns one verdict per id: purged, missing, kept or
#: active:<status>. Keys are built from the tenant's prefix (one Redis, not a cluster).
PURGE_LUA = """
local prefix, now, usage_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cutoff, allowed, terminal = tonumber(ARGV[5]), {}, {succeeded=1, failed=1, cancelled=1}
for s in string.gmatch(ARGV[4], '[^,]+') do allowed[s] = 1 end
local out = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local key = prefix .. 'exec:' .. id
  local meta = redis.call('HGET', key, 'meta')
  local verdict = 'missing'
  if meta then
    local m = cjson.decode(meta)
    local status, ended = tostring(m['status']), tonumber(m['updated_at']) or 0
    if not terminal[status] then verdict = 'active:' .. status
    elseif not allowed[status] or (cutoff and ended >= cutoff) then verdict = 'kept'
    else
      verdict = 'purged'
      redis.call('UNLINK', key, key .. ':events', prefix .. 'webhook:' .. id)
      local index = prefix .. 'trace-index:' .. id
      for _, t in ipairs(redis.call('SMEMBERS', index)) do
        redis.call('UNLINK', prefix .. 'trace:' .. t)
        redis.call('ZREM', prefix .. 'traces', t)
      end
      redis.call('UNLINK', index)
      local usage = prefix .. 'llm:usage:execution:' .. id
      local keep = math.ceil(ended + usage_s - now)
      if usage_s >= 0 and keep <= 0 then redis.call('UNLINK', usage)
      elseif usage_s >= 0 then redis.call('EXPIRE', usage, keep) end
    end
  end
  if verdict == 'purged' or verdict == 'missing' then
    redis.call('ZREM', prefix .. 'execs', id)
    redis.call('ZREM', prefix .. 'execs:ended', id)
    redis.call('SREM', prefix .. 'execs:active', id)
  end
  out[#out + 1] = verdict
end
return out
"""


@dataclass
class PurgeReport:
    """What one purge did: ids deleted, ids not found, ids left alive (with their status)."""

    purged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    active: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    blobs_deleted: int = 0
    journal_keys_deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "purged": self.purged,
            "missing": self.missing,
            "active": self.active,
            "kept": self.kept,
            "blobs_deleted": self.blobs_deleted,
            "journal_keys_deleted": self.journal_keys_deleted,
        }


class Purger:
    """Deletes one tenant's finished executions and everything kept for them."""

    def __init__(self, store: Store, outputs: BlobDir, usage_days: float | None = 400) -> None:
        self.store = store
        #: The tenant's `<blobs>/<tenant>/outputs` directory.
        self.outputs = outputs
        self.usage_days = usage_days

    async def expired(
        self, cutoff: float, statuses: Collection[str] = TERMINAL, busy: Collection[str] = ()
    ) -> list[str]:
        """Ids of executions that ended in `statuses` before `cutoff` (and stale index
        entries): from the `execs:ended` index, plus any created before `cutoff` that the
        index does not list (ended before it existed)."""
        redis = self.store.async_redis()
        ended = await redis.zrangebyscore(self.store.key("execs", "ended"), "-inf", f"({cutoff}")
        old = await redis.zrangebyscore(self.store.key("execs"), "-inf", f"({cutoff}")
        indexed = set(ended)
        unindexed = [i for i in old if i not in indexed]
        metas = await self._metas([*ended, *unindexed])
        return select_expired(metas, cutoff, statuses, busy)

    async def _metas(self, ids: list[str]) -> dict[str, dict[str, Any] | None]:
        found: dict[str, dict[str, Any] | None] = {}
        redis = self.store.async_redis()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = redis.pipeline(transaction=False)
            for execution_id in chunk:
                pipe.hget(self.store.key("exec", execution_id), "meta")
            for execution_id, raw in zip(chunk, await pipe.execute(), strict=True):
                found[execution_id] = json.loads(raw) if raw else None
        return found

    async def purge(
        self,
        ids: Iterable[str],
        *,
        cutoff: float | None = None,
        statuses: Collection[str] = TERMINAL,
        batch: int = 200,
    ) -> PurgeReport:
        """Purge the executions `ids` that ended in `statuses` (before `cutoff` if given).

        Raises: StoreUnavailable.
        """
        report = PurgeReport()
        ids = list(dict.fromkeys(ids))
        script = self.store.async_redis().register_script(PURGE_LUA)
        usage_s = -1.0 if self.usage_days is None else self.usage_days * DAY
        age = "" if cutoff is None else repr(cutoff)
        head = [self.store.key(""), time.time(), usage_s, ",".join(statuses), age]
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            verdicts = await script(keys=[], args=[*head, *chunk])
            for execution_id, verdict in zip(chunk, verdicts, strict=True):
                _note(report, execution_id, str(verdict))
            await asyncio.sleep(0)  # let the engine run between batches
        if report.purged:
            gone = set(report.purged)
            report.journal_keys_deleted = await self._drop_journals(gone)
            report.blobs_deleted = await asyncio.to_thread(self._drop_blobs, report.purged)
        return report

    async def _drop_journals(self, ids: set[str]) -> int:
        """UNLINK the LLM journals, reply caches and leases of `ids` (one SCAN)."""
        redis, prefix = self.store.async_redis(), self.store.key("llm", "")
        doomed = []
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            kind, _, rest = key[len(prefix) :].partition(":")
            if kind in ("journal", "replies", "lease") and rest.partition(":")[0] in ids:
                doomed.append(key)
        for start in range(0, len(doomed), 500):
            await redis.unlink(*doomed[start : start + 500])
        return len(doomed)

    def _drop_blobs(self, ids: list[str]) -> int:
        """Delete `<outputs>/<id>/` of each id; returns how many directories there were."""
        fs, deleted = self.outputs.fs, 0
        for execution_id in ids:
            path = f"{self.outputs.path}/{segment(execution_id)}"
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                continue
            fs.delete_dir(path)
            deleted += 1
        return deleted


def _note(report: PurgeReport, execution_id: str, verdict: str) -> None:
    if verdict == "purged":
        report.purged.append(execution_id)
    elif verdict == "missing":
        report.missing.append(execution_id)
    elif verdict.startswith("active:"):
        report.active[execution_id] = verdict.partition(":")[2]
    else:
        report.kept.append(execution_id)


async def trim_messages(store: Store, older_than_s: float, now: float | None = None) -> int:
    """XTRIM MINID every message stream of the tenant to entries newer than `older_than_s`;
    returns how many entries went."""
    redis, prefix = store.async_redis(), store.key("")
    min_id = f"{math.floor(((now or time.time()) - older_than_s) * 1000)}-0"
    trimmed = 0
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000, _type="stream"):
        if key[len(prefix) :].partition(":")[0] in MESSAGE_KINDS:
            trimmed += int(await redis.xtrim(key, minid=min_id, approximate=False))
    return trimmed


async def trim_task_records(store: Store, older_than_s: float, now: float | None = None) -> int:
    """Delete finished task records last changed more than `older_than_s` ago."""
    redis, prefix = store.async_redis(), store.key("task", "")
    cutoff, doomed = (now or time.time()) - older_than_s, []
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000, _type="hash"):
        status, updated = await redis.hmget(key, "status", "updated_at")
        if status in TERMINAL and float(updated or 0) < cutoff:
            doomed.append(key)
    if doomed:
        await redis.unlink(*doomed)
        await redis.zrem(store.key("tasks", "kept"), *(k[len(prefix) :] for k in doomed))
    return len(doomed)


async def sweep(
    purger: Purger, policy: Retention, busy: Collection[str] = (), now: float | None = None
) -> dict[str, Any]:
    """One pass of retention over the tenant; returns what it deleted."""
    now = now or time.time()
    done: dict[str, Any] = {"executions": 0, "messages": 0, "task_records": 0}
    if policy.executions_days is not None:
        cutoff = now - policy.executions_days * DAY
        ids = await purger.expired(cutoff, TERMINAL, busy)
        report = await purger.purge(ids, cutoff=cutoff, batch=policy.batch)
        done["executions"], done["blobs"] = len(report.purged), report.blobs_deleted
    if policy.messages_days is not None:
        done["messages"] = await trim_messages(purger.store, policy.messages_days * DAY, now)
    if policy.task_records_days < 1:
        done["task_records"] = await trim_task_records(
            purger.store, policy.task_records_days * DAY, now
        )
    return done


async def run_sweeps(
    purger: Purger, policy: Retention, busy: Callable[[], Collection[str]] = tuple
) -> None:
    """Sweep every `sweep_interval_s` for ever; an error is logged and the next pass runs."""
    await asyncio.sleep(min(policy.sweep_interval_s, 60.0))
    while True:
        try:
            done = await sweep(purger, policy, busy())
            if any(done.values()):
                log.info("retention sweep of %s deleted %s", purger.store.tenant, done)
        except asyncio.CancelledError:
            raise
        except Exception:  # the sweep must outlive a store outage or a bad blob
            log.exception("retention sweep of %s failed; trying again later", purger.store.tenant)
        await asyncio.sleep(policy.sweep_interval_s)


__all__ = [
    "DAY",
    "TERMINAL",
    "PurgeReport",
    "Purger",
    "Retention",
    "check_statuses",
    "parse_duration",
    "retention_as_json",
    "run_sweeps",
    "select_expired",
    "sweep",
    "trim_messages",
    "trim_task_records",
]
