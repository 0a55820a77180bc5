"""Retention without Ray: which executions a sweep selects, and what a purge deletes in the
real session Valkey and on disk (never an execution that has not ended)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pyarrow as pa
import pytest

from cluster.errors import ConfigError
from cluster.retention import (
    DAY,
    Purger,
    Retention,
    parse_duration,
    run_sweeps,
    select_expired,
    sweep,
    trim_messages,
)
from cluster.settings import load_settings
from cluster.store import Store
from workflows.execution import Event, Execution, ExecutionStatus, StepState, StepStatus
from workflows.store import BlobStore, ExecutionStore

NOW = 1_000_000_000.0


def meta(status: str, ended: float) -> dict[str, object]:
    return {"status": status, "updated_at": ended}


def test_selection_takes_only_finished_executions_ended_before_the_cutoff() -> None:
    metas = {
        "old-ok": meta("succeeded", NOW - 10),
        "old-failed": meta("failed", NOW - 10),
        "old-cancelled": meta("cancelled", NOW - 10),
        "new-ok": meta("succeeded", NOW + 10),
        "old-running": meta("running", NOW - 10),
        "old-paused": meta("paused", NOW - 10),
        "old-waiting": meta("waiting_approval", NOW - 10),
        "old-pending": meta("pending", NOW - 10),
        "busy-ok": meta("succeeded", NOW - 10),
        "gone": None,
    }
    chosen = select_expired(metas, NOW, busy={"busy-ok"})
    assert chosen == ["old-ok", "old-failed", "old-cancelled", "gone"]
    assert select_expired(metas, NOW, statuses={"failed"}, busy={"busy-ok"}) == [
        "old-failed",
        "gone",
    ]


def test_durations_and_per_tenant_settings() -> None:
    assert parse_duration("7d") == 7 * DAY
    assert parse_duration("90") == 90 and parse_duration("30m") == 1800
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("7 days")
    settings = load_settings(
        retention={"executions_days": 10, "tenants": {"acme": {"executions_days": 90}}}
    )
    assert settings.retention.for_tenant("acme").executions_days == 90
    assert settings.retention.for_tenant("other").executions_days == 10
    assert Retention().usage_days == 400 and Retention().task_records_days == 1
    with pytest.raises(ConfigError, match=r"retention\.tenants\.acme.*executions_dayz"):
        load_settings(retention={"tenants": {"acme": {"executions_dayz": 1}}})


def test_retention_from_the_environment_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAFNCK_RETENTION", '{"tenants": {"acme": {"messages_days": null}}}')
    settings = load_settings()
    assert settings.retention.for_tenant("acme").messages_days is None
    monkeypatch.setenv("DAFNCK_RETENTION", settings.model_dump(mode="json")["retention"])
    assert load_settings().retention == settings.retention


def _execution(executions: ExecutionStore, status: ExecutionStatus, table: bool = False) -> str:
    execution = Execution(workflow="w", version=1, status=status)
    output = {"t": pa.table({"n": [1, 2]})} if table else {"n": 1}
    execution.steps["a"] = StepState(status=StepStatus.SUCCEEDED, output=output)
    executions.commit(
        execution, steps=["a"], events=[Event(type="execution.started", execution=execution.id)]
    )
    return execution.id


def _keys(store: Store) -> set[str]:
    return set(store.redis.scan_iter(match=store.key("*"), count=1000))


def test_a_sweep_purges_what_ended_long_ago_and_never_a_running_execution(
    store: Store, tmp_path: Path
) -> None:
    tenant = store.for_tenant("acme")
    executions = ExecutionStore(tenant, BlobStore(str(tmp_path)))
    outputs = tmp_path / "acme" / "outputs"
    running = _execution(executions, ExecutionStatus.RUNNING, table=True)
    paused = _execution(executions, ExecutionStatus.PAUSED)
    baseline = _keys(tenant)
    done = [_execution(executions, ExecutionStatus.SUCCEEDED, table=True) for _ in range(3)]
    done.append(_execution(executions, ExecutionStatus.FAILED))
    tenant.redis.hset(tenant.key("llm", "journal", done[0], "a"), "c1", "{}")
    tenant.redis.hset(tenant.key("llm", "usage", "execution", done[0]), "calls", 1)
    assert {p.name for p in outputs.iterdir()} == {running, *done[:3]}
    assert tenant.redis.zcard(tenant.key("execs", "ended")) == 4

    purger = Purger(tenant, executions.blobs.dir, usage_days=None)
    policy = Retention(executions_days=30, messages_days=None)
    assert asyncio.run(sweep(purger, policy))["executions"] == 0  # ended just now: kept
    later = time.time() + 31 * DAY
    report = asyncio.run(sweep(purger, policy, now=later))
    assert report["executions"] == 4 and report["blobs"] == 3
    # The usage hash outlives the execution (usage_days=None: kept for ever); all else went.
    assert _keys(tenant) - baseline == {tenant.key("llm", "usage", "execution", done[0])}
    assert {p.name for p in outputs.iterdir()} == {running}
    assert executions.load(running).status == ExecutionStatus.RUNNING

    # Named explicitly, a running or paused execution is still refused.
    refused = asyncio.run(purger.purge([running, paused, "nope"]))
    assert refused.purged == [] and refused.missing == ["nope"]
    assert refused.active == {running: "running", paused: "paused"}
    assert executions.load(paused).status == ExecutionStatus.PAUSED
    assert (outputs / running).is_dir()


def test_usage_is_kept_until_its_own_retention_then_deleted_with_the_execution(
    store: Store, tmp_path: Path
) -> None:
    tenant = store.for_tenant("acme")
    executions = ExecutionStore(tenant, BlobStore(str(tmp_path)))
    kept, gone = (_execution(executions, ExecutionStatus.SUCCEEDED) for _ in range(2))
    for execution_id in (kept, gone):
        tenant.redis.hset(tenant.key("llm", "usage", "execution", execution_id), "calls", 1)
    asyncio.run(Purger(tenant, executions.blobs.dir, usage_days=400).purge([kept]))
    ttl = tenant.redis.ttl(tenant.key("llm", "usage", "execution", kept))
    assert 399 * DAY < ttl <= 400 * DAY
    old = executions.load(gone).model_copy(update={"updated_at": time.time() - 2 * DAY})
    tenant.redis.hset(tenant.key("exec", gone), "meta", old.model_dump_json(exclude={"steps"}))
    asyncio.run(Purger(tenant, executions.blobs.dir, usage_days=1).purge([gone]))
    assert not tenant.redis.exists(tenant.key("llm", "usage", "execution", gone))


def test_messages_are_trimmed_by_age_but_work_queues_are_not(store: Store) -> None:
    tenant = store.for_tenant("acme")
    for kind in ("inbox:a", "topic:t", "events:step.succeeded", "inbox:a:dead", "queue:q"):
        tenant.redis.xadd(tenant.key(kind), {"m": "1"})
    assert asyncio.run(trim_messages(tenant, DAY)) == 0  # all newer than a day
    assert asyncio.run(trim_messages(tenant, DAY, now=time.time() + 2 * DAY)) == 4
    assert tenant.redis.xlen(tenant.key("inbox:a")) == 0
    assert tenant.redis.xlen(tenant.key("queue:q")) == 1


def test_the_sweep_loop_logs_a_failure_and_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    dead = Store(redis.Redis(port=1, socket_connect_timeout=0.2), "redis://127.0.0.1:1", "acme")
    dead._options = {"socket_connect_timeout": 0.2}
    purger = Purger(dead, BlobStore(str(tmp_path)).scoped("acme", "outputs").dir)

    async def watch() -> None:
        # Unvalidated: settings allow 1 s at least, and only the loop's behaviour matters here.
        policy = Retention.model_construct(sweep_interval_s=0.05)
        task = asyncio.create_task(run_sweeps(purger, policy))
        deadline = time.monotonic() + 20
        while len([r for r in caplog.records if "sweep of acme failed" in r.message]) < 2:
            assert not task.done() and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        task.cancel()

    with caplog.at_level(logging.ERROR, logger="cluster.retention"):
        asyncio.run(watch())


def test_a_cutoff_before_1970_keeps_everything(store: Store, tmp_path: Path) -> None:
    """`older_than_s` of a century gives a negative cutoff: nothing is that old."""
    tenant = store.for_tenant("acme")
    executions = ExecutionStore(tenant, BlobStore(str(tmp_path)))
    done = _execution(executions, ExecutionStatus.SUCCEEDED)
    report = asyncio.run(Purger(tenant, executions.blobs.dir).purge([done], cutoff=-1.0))
    assert report.kept == [done] and executions.load(done).id == done
