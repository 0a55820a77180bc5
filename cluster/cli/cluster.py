"""`dafnck up/down/status`, backups, the demo and the bench: the cluster as a whole.

The functions here are plain; `cli.py` registers them on the app, in the order
`dafnck --help` lists them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cluster.cli.common import GlobalOptions, client, console, print_json
from cluster.errors import ConfigError
from cluster.settings import Settings


def up(
    num_cpus: Annotated[int | None, typer.Option(help="CPUs the local Ray head offers.")] = None,
) -> None:
    """Start (or join) the cluster: Ray head, embedded Valkey, and the system actors."""
    from actors.system import ensure_supervisor
    from cluster.ray_runtime import address_to_join, init_ray, start_head
    from cluster.store import redacted, resolve_redis_url

    settings = GlobalOptions.settings()
    with console.status("starting DafnckMachine..."):
        url = resolve_redis_url(settings)
        _check_schema(settings, url)
        if address_to_join(settings, GlobalOptions.address) is None:
            start_head(settings, num_cpus)
        dashboard = init_ray(settings, GlobalOptions.address, missing="fail")
        ensure_supervisor(settings, url)
        api = _start_api(settings, url)
    table = Table(show_header=False, box=None)
    table.add_row("Ray dashboard", dashboard or "(not running)")
    table.add_row("HTTP API", f"{api}/docs" if api else "(off: api_port is 0)")
    if api and settings.grpc_port:
        table.add_row("gRPC API", f"{settings.api_host}:{settings.grpc_port} (reflection on)")
    table.add_row("state store", redacted(url))
    table.add_row("tenant", settings.tenant)
    console.print(table)
    console.print("[green]DafnckMachine is up.[/] Try: dafnck demo (dafnck init writes configs/)")


def _check_schema(settings: Settings, url: str) -> None:
    """Migrate an older store forward (after a backup) or refuse a newer one."""
    from cluster.schema_version import CURRENT, ensure_schema
    from cluster.store import connect_store
    from workflows.migrations import MIGRATIONS

    store = connect_store(settings, url=url)
    for version in ensure_schema(store.redis, settings, MIGRATIONS):
        console.print(f"store migrated from schema {version} to {version + 1} (of {CURRENT})")


def _start_api(settings: Settings, redis_url: str) -> str:
    if not settings.api_port:
        return ""
    from serve.deployment import start_api

    return start_api(
        settings.model_copy(update={"redis_url": redis_url}), settings.api_host, settings.api_port
    )


def down() -> None:
    """Stop what `dafnck up` started here: the Ray head and the embedded Valkey (its AOF stays)."""
    from cluster.ray_runtime import stop_head
    from cluster.valkey import stop_valkey

    settings = GlobalOptions.settings()
    stopped = stop_head(settings)  # returns when all of them are gone, leftovers too
    valkey = False if settings.redis_url else stop_valkey(settings.state_dir)
    console.print(
        f"stopped {stopped} Ray process(es)" + ("; embedded Valkey stopped" if valkey else "")
    )


def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Cluster resources, system actors, and each pool's replicas, health and load."""
    from actors.health import pools_of

    health = client("fail").health()
    if as_json:
        print_json(health)
        return
    ray_info = health["ray"]
    res, avail = ray_info["resources"], ray_info["available"]
    console.print(
        f"[bold]{health['status']}[/]  nodes {ray_info['nodes']}  "
        f"CPU {avail.get('CPU', 0):g}/{res.get('CPU', 0):g} free  "
        f"store {health['store_latency_ms']} ms"
    )
    for name, actor in health.get("system", {}).items():
        restarted = " (restarted)" if actor["restarted"] else ""
        console.print(
            f"{name}: pid {actor['pid']}{restarted}, {actor['executions_running']} executions running"
        )
    table = Table("agent", "status", "capabilities", "replicas", "in flight", "done", "restarts")
    for agent_id, pool in pools_of(health).items():
        table.add_row(
            agent_id, pool.status, ", ".join(pool.capabilities), f"{pool.running}/{pool.desired}",
            str(pool.in_flight), str(pool.completed), str(pool.restarts),
        )  # fmt: skip
    console.print(table)
    if "components" in health:
        from cluster.cli.obs import components_table

        console.print(components_table(health))


# -- backups ---------------------------------------------------------------------------


def backup(
    label: Annotated[str | None, typer.Option(help="A note kept with the backup.")] = None,
    prefix: Annotated[
        list[str] | None, typer.Option(help="Only keys under this prefix; repeat.")
    ] = None,
) -> None:
    """Snapshot this tenant's state (registry, workflows, executions, messages, data) to Parquet."""
    from cluster.data.models import BackupCriteria

    result = client().data.backup(BackupCriteria(label=label, prefixes=prefix or []))
    info = result.info
    console.print(
        f"backup {info.backup_id}: {info.counts.keys} keys in {result.duration_s:.2f}s -> {info.uri}"
    )


def backups() -> None:
    """List this tenant's backups."""
    table = Table("backup", "created", "keys", "label", "where")
    for info in client().data.list_backups():
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at))
        table.add_row(info.backup_id, created, str(info.counts.keys), info.label or "", info.uri)
    console.print(table)


def restore(
    backup_id: str,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write over the keys the backup holds.")
    ] = False,
) -> None:
    """Restore a backup into this tenant's (empty) state and check it against its manifest.

    API keys, users, the audit and idempotency records are never restored; the restore is
    written to the tenant's audit before it starts."""
    from cluster.auth.audit import AuditLog
    from cluster.data.restore import operator_principal, restore_audited

    c = client()
    principal = operator_principal(c.settings.tenant)
    result = restore_audited(
        c.data, AuditLog(c.store), principal, backup_id, into_empty=not overwrite
    )
    kept = f"; {result.skipped_keys} security records kept as live" if result.skipped_keys else ""
    console.print(
        f"restored {result.keys} keys from {backup_id}; checksum {result.checksum[:16]} "
        f"matches{kept}"
    )


# -- demo and bench --------------------------------------------------------------------


def demo(
    path: Annotated[Path, typer.Argument(help="The directory to review.")] = Path("."),
    output: Annotated[Path, typer.Option(help="The Markdown report.")] = Path("reports/review.md"),
    agents: Annotated[
        Path | None,
        typer.Option(help="Agent specs [default: configs/agents/review.yaml or packaged]."),
    ] = None,
    workflow: Annotated[
        Path | None,
        typer.Option(help="Workflow [default: configs/workflows/review.yaml or packaged]."),
    ] = None,
    llm: Annotated[
        bool, typer.Option("--llm", help="The LLM demo (needs OPENAI_API_KEY or OPENAI_BASE_URL).")
    ] = False,
    model: Annotated[str | None, typer.Option(help="The LLM demo's model.")] = None,
) -> None:
    """Review a repository with the review workflow and three agents; write a Markdown report.

    With --llm: an LLM agent reads outlines of the files and names the ones to read first."""
    if llm:
        from cluster.cli.llm_demo import run_llm_demo

        run_llm_demo(client, path, model, console)
        return
    from cluster.cli.demo import run_review
    from cluster.cli.init import example

    agents = agents or example("agents/review.yaml")
    workflow = workflow or example("workflows/review.yaml")
    outputs = run_review(client(), path, output, agents, workflow, console)
    console.print(f"\n[green]Report written to {outputs['report']}[/]")


def bench(
    suite: Annotated[list[str] | None, typer.Option("--suite", help="Run only this suite.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure DafnckMachine against raw Ray in one run; ratios are what to compare."""
    from cluster.bench.core import SUITES, render_table, run_bench

    unknown = [s for s in suite or [] if s not in SUITES]
    if unknown:
        raise ConfigError(f"--suite: unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    out = sys.stdout
    # Ray prints its raylet messages to stdout; with --json, stdout carries the report only.
    with contextlib.redirect_stdout(sys.stderr if as_json else out):
        report = run_bench(GlobalOptions.settings(), suite or None)
    if as_json:
        out.write(json.dumps(report) + "\n")
    else:
        console.print(render_table(report))


__all__ = ["backup", "backups", "bench", "demo", "down", "restore", "status", "up"]
