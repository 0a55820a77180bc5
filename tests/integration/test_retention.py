"""Purging on a real Ray and Valkey: 1,000 finished executions (20 with Arrow outputs) are
deleted, and the tenant's keys, blob files and Redis memory return to where they were; an
execution that is still running is never purged."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from actors.client import Client, connect
from actors.models import AgentSpec
from cluster.cli.executions import exec_app
from cluster.errors import NotFound
from cluster.retention import DAY, Purger, PurgeReport, trim_messages
from cluster.settings import Settings
from tests.integration.helpers import echo_spec, slow_spec, wait_until
from workflows.execution import ExecutionStatus
from workflows.spec import WorkflowSpec

pytestmark = pytest.mark.timeout(600)

RUNS, WITH_TABLES = 1_000, 20


def _workflow(name: str, uses: str, with_: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": name, "steps": [{"id": "s", "uses": uses, "with": with_}]}
    )


def _setup(client: Client) -> None:
    table = AgentSpec(
        name="tables", capabilities=["test.table"], entrypoint="tests.fixtures.agents:table",
        replicas={"min": 1, "max": 1}, max_concurrency=64,
    )  # fmt: skip
    client.agents.apply([echo_spec(replicas=2, max_concurrency=64), table, slow_spec()])
    client.workflows.define(_workflow("one", "test.echo", {"text": "hi"}))
    client.workflows.define(_workflow("tab", "test.table", {"rows": 5}))
    client.workflows.define(_workflow("nap", "test.slow", {"seconds": 300}))


def _keys(client: Client) -> set[str]:
    store = client.workflows.executions.store
    return set(store.redis.scan_iter(match=store.key("*"), count=2000))


def _blob_files(settings: Settings) -> int:
    outputs = Path(settings.blobs) / settings.tenant / "outputs"
    return sum(1 for p in outputs.rglob("*") if p.is_file()) if outputs.exists() else 0


def _run_all(client: Client, names: list[str]) -> list[str]:
    """Start every execution, then wait until all have ended (polling the store)."""
    ids = [client.workflows.run(name, wait=False).id for name in names]
    store = client.workflows.executions.store
    wait_until(
        lambda: store.redis.zcard(store.key("execs", "ended")) >= len(ids),
        300,
        f"{len(ids)} executions ended",
        interval_s=1,
    )
    return ids


def _purge_all(client: Client, settings: Settings) -> PurgeReport:
    executions = client.workflows.executions
    purger = Purger(executions.store, executions.blobs.dir, settings.retention.usage_days)

    async def go() -> PurgeReport:
        return await purger.purge(await purger.expired(time.time() + 1))

    return asyncio.run(go())


def _settled(client: Client) -> set[str]:
    """The tenant's keys once span exports have landed: the same on two reads 2 s apart
    (spans are exported in batches every 0.5 s)."""
    seen = [_keys(client)]

    def same() -> bool:
        now = _keys(client)
        stable, seen[0] = now == seen[0], now
        return stable

    wait_until(same, 120, "the tenant's keys to stop changing", interval_s=2)
    return seen[0]


def test_purging_1000_executions_returns_keys_blobs_and_memory_to_the_baseline(
    client: Client, tenant_settings: Settings, valkey_url: str
) -> None:
    admin = redis.Redis.from_url(valkey_url, decode_responses=True)
    _setup(client)
    # One of each first, purged: the tenant's streams of domain events now exist.
    _run_all(client, ["one", "tab"])
    _settled(client)
    assert len(_purge_all(client, tenant_settings).purged) == 2
    baseline_keys, baseline_blobs = _settled(client), _blob_files(tenant_settings)
    baseline_memory = int(admin.info("memory")["used_memory"])

    ids = _run_all(client, ["tab"] * WITH_TABLES + ["one"] * (RUNS - WITH_TABLES))
    grown = _settled(client)
    statuses = {e.status for e in client.workflows.ls(limit=RUNS)}
    assert statuses == {ExecutionStatus.SUCCEEDED}
    assert len(grown - baseline_keys) >= 2 * RUNS  # a hash and an event stream each at least
    assert _blob_files(tenant_settings) == baseline_blobs + WITH_TABLES
    peak_memory = int(admin.info("memory")["used_memory"])

    report = _purge_all(client, tenant_settings)
    assert sorted(report.purged) == sorted(ids) and report.blobs_deleted == WITH_TABLES
    # The bus's copies of the events are messages: trimmed by age, here all of them.
    asyncio.run(trim_messages(client.workflows.executions.store, 0))
    after_keys = _settled(client)
    assert after_keys == baseline_keys, sorted(after_keys ^ baseline_keys)[:10]
    assert _blob_files(tenant_settings) == baseline_blobs
    after_memory = int(admin.info("memory")["used_memory"])
    growth = peak_memory - baseline_memory
    assert growth > 1_000_000  # 1,000 executions are visible in Redis's memory ...
    assert after_memory - baseline_memory < 0.1 * growth  # ... and gone again


def test_a_running_execution_is_never_purged(client: Client, tenant_settings: Settings) -> None:
    _setup(client)
    running = client.workflows.run("nap", wait=False).id
    wait_until(
        lambda: client.workflows.status(running).status == ExecutionStatus.RUNNING, 60, "running"
    )
    executions = client.workflows.executions
    purger = Purger(executions.store, executions.blobs.dir)

    async def go() -> tuple[list[str], PurgeReport]:
        chosen = await purger.expired(time.time() + 3600)
        return chosen, await purger.purge([running])

    chosen, report = asyncio.run(go())
    assert running not in chosen
    assert report.purged == [] and report.active == {running: "running"}
    assert client.workflows.status(running).status == ExecutionStatus.RUNNING
    assert list(client.workflows.events(running))  # its history is still there

    # `dafnck executions purge ID...` the same: the finished one goes, the running one stays.
    finished = client.workflows.run("one", timeout_s=60).id
    env = {
        "DAFNCK_REDIS_URL": str(tenant_settings.redis_url),
        "DAFNCK_STATE_DIR": str(tenant_settings.state_dir),
        "DAFNCK_TENANT": tenant_settings.tenant,
    }
    printed = CliRunner().invoke(exec_app, ["purge", "--json", finished, running], env=env)
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == {
        "purged": [finished], "missing": [], "active": {running: "running"}, "kept": [],
        "blobs_deleted": 0, "journal_keys_deleted": 0,
    }  # fmt: skip
    with pytest.raises(NotFound):
        client.workflows.status(finished)
    assert client.workflows.status(running).status == ExecutionStatus.RUNNING
    client.workflows.cancel(running, "test", "done")


def test_the_supervisors_sweep_purges_what_is_past_its_retention(
    tenant_settings: Settings,
) -> None:
    """A tenant whose executions are kept about a second: its supervisor's sweep deletes a
    finished one on its own, and leaves the running one."""
    short = tenant_settings.retention.model_copy(
        update={
            "tenants": {tenant_settings.tenant: {"executions_days": 1 / DAY, "sweep_interval_s": 1}}
        }
    )
    client = connect(settings=tenant_settings.model_copy(update={"retention": short}))
    _setup(client)
    running = client.workflows.run("nap", wait=False).id
    finished = client.workflows.run("tab", timeout_s=60).id
    outputs = Path(tenant_settings.blobs) / tenant_settings.tenant / "outputs"
    assert (outputs / finished).is_dir()

    def gone() -> bool:
        try:
            client.workflows.status(finished)
        except NotFound:
            return True
        return False

    wait_until(gone, 60, "the sweep to purge the finished execution")
    assert not (outputs / finished).exists()
    assert client.workflows.status(running).status == ExecutionStatus.RUNNING
    client.workflows.cancel(running, "test", "done")
