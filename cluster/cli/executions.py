"""`dafnck run/submit` and `dafnck executions`: run workflows and control their executions.

`run` and `submit` are plain functions that `cluster.cli.main` registers on the app; the
`executions` group is `exec_app`, its `logs` command first (from `cluster.cli.obs`). Each
control command calls one operation of the supervisor's contract (`actors.contract`) by
name through `Client.api`, as REST and gRPC do: `approve` and `reject` are `decide_step`.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cluster.cli.common import GlobalOptions, client, console, err, print_json
from cluster.cli.obs import register as register_logs
from cluster.errors import InputInvalid

if TYPE_CHECKING:
    from workflows.execution import Execution

exec_app = typer.Typer(help="List, inspect and control workflow executions.", no_args_is_help=True)
register_logs(exec_app, lambda: client("fail"), console)


def _parse_inputs(pairs: list[str], declared: dict[str, Any]) -> dict[str, Any]:
    """`k=v` pairs; values of non-string inputs are read as JSON (numbers, lists, ...)."""
    values: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            problems.append(f"--input {pair!r}: expected KEY=VALUE")
            continue
        kind = declared[key].type if key in declared else "any"
        try:
            values[key] = raw if kind == "string" else json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw  # a bare word for an `any` input; the type check names mismatches
    if problems:
        raise InputInvalid("--input", problems)
    return values


def run(
    file: Annotated[Path, typer.Argument(help="A workflow YAML file.")],
    input: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE; repeat.")
    ] = None,
    detach: Annotated[
        bool, typer.Option(help="Print the execution id and return at once.")
    ] = False,
) -> None:
    """Define the workflow in FILE, run it with a live table of its steps, print its outputs.

    Exit code: 0 succeeded, 1 failed, 2 invalid workflow or inputs, 3 cancelled.
    """
    from cluster.cli.progress import EXIT_CODES, watch

    remote = client()
    main_spec = _define(remote, file)
    execution = remote.workflows.run(
        main_spec.name, _parse_inputs(input or [], main_spec.inputs), wait=False
    )
    if detach:
        console.print(execution.id)
        return
    done = watch(remote.workflows, execution, console)
    if done.outputs is not None:
        from workflows.tables import summarise

        print_json(summarise(done.outputs))
    if done.error:
        err.print(f"[red]{done.status.value}:[/] {escape(done.error.message)}")
    raise typer.Exit(EXIT_CODES.get(done.status.value, 4))


def _define(remote: Any, file: Path) -> Any:
    """Define every workflow in FILE on the cluster; returns the last (the one to run)."""
    from workflows.loader import load_workflow_specs

    records = remote.registry.all()
    specs = [  # validated here too, so every problem names its file and line
        spec
        for spec, _ in load_workflow_specs(
            file,
            known_capabilities={c for r in records for c in r.spec.capabilities},
            known_agents={r.spec.name for r in records},
            known_workflows=set(remote.workflows.executions.workflows()),
        )
    ]
    for spec in specs:
        remote.workflows.define(spec)
    return specs[-1]


def submit(
    file: Annotated[
        Path, typer.Argument(help="A workflow YAML file (path inside the working dir).")
    ],
    input: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE; repeat.")
    ] = None,
    agents: Annotated[
        list[Path] | None, typer.Option("--agents", help="Agent specs to apply first; repeat.")
    ] = None,
    runtime_env: Annotated[
        Path | None, typer.Option(help="runtime_env YAML (default configs/runtime_env.yaml).")
    ] = None,
    submission_id: Annotated[
        str | None, typer.Option(help="Idempotency key: the same id again submits nothing.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job and print its logs.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 3600,
) -> None:
    """Run the workflow in FILE as a Ray job (`dafnck run` on the cluster's driver).

    The job server is --address when it is http(s)://HEAD:8265, else the dashboard of the
    cluster this machine joins. Exit code with --wait: 0 succeeded, 1 otherwise.
    """
    from cluster.cli import jobs

    settings = GlobalOptions.settings()
    job = jobs.JobSubmission(
        workflow_file=str(file), inputs=input or [], agents=[str(a) for a in agents or []],
        runtime_env=_runtime_env(runtime_env, settings.tenant), tenant=settings.tenant,
        **({"submission_id": submission_id} if submission_id else {}),
    )  # fmt: skip
    jobs.workflow_name(file)  # a missing or nameless file fails here, not on the cluster
    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per file uploaded
    job_client = jobs.job_client(jobs.dashboard_address(settings, GlobalOptions.address))
    job_id, submitted = jobs.submit(job_client, job)
    console.print(f"job {job_id} " + ("submitted" if submitted else "already submitted"))
    if wait:
        _wait_for_job(job_client, job_id, timeout)


def _runtime_env(path: Path | None, tenant: str) -> dict[str, Any]:
    """The --runtime-env file, else configs/runtime_env.yaml when there is one, read."""
    from cluster.cli import jobs

    env_file = path or (jobs.DEFAULT_RUNTIME_ENV if jobs.DEFAULT_RUNTIME_ENV.exists() else None)
    return jobs.load_runtime_env(env_file, tenant)


def _wait_for_job(job_client: Any, job_id: str, timeout_s: float) -> None:
    """Print the job's logs and status once it ends; exit 0 if it succeeded, else 1."""
    from cluster.cli import jobs

    status = jobs.wait(job_client, job_id, timeout_s)
    sys.stdout.write(job_client.get_job_logs(job_id))
    console.print(f"job {job_id}: {status}")
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@exec_app.command("ls")
def executions_ls(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List executions, newest first."""
    executions = client().workflows.ls(limit)
    if as_json:
        print_json([e.model_dump(mode="json", exclude={"steps"}) for e in executions])
        return
    table = Table("execution", "workflow", "version", "status", "started", "error")
    for e in executions:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created_at))
        table.add_row(
            e.id,
            e.workflow,
            str(e.version),
            e.status.value,
            started,
            e.error.message[:50] if e.error else "",
        )
    console.print(table)


@exec_app.command("show")
def executions_show(execution_id: str) -> None:
    """One execution: status, inputs, outputs and every step (each Arrow table as its rows,
    columns and where it is stored)."""
    from workflows.tables import execution_view

    print_json(execution_view(client().workflows.status(execution_id)))


@exec_app.command("events")
def executions_events(
    execution_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False
) -> None:
    """The execution's event history (and, with --follow, new events as they come)."""
    workflows = client().workflows
    cursor = "0-0"
    while True:
        for event_id, event in workflows.events(
            execution_id, cursor, block_ms=1000 if follow else None
        ):
            cursor = event_id
            stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
            console.print(
                f"{event_id}  {stamp}  {event.type:<24} {event.step or '':<16} {json.dumps(event.data, default=str)[:120]}",
                markup=False,
            )
        if not follow:
            return


def _printed(execution: Execution) -> None:
    console.print(f"execution {execution.id}: {execution.status.value}")


@exec_app.command("pause")
def executions_pause(execution_id: str) -> None:
    """No new step starts; running steps finish."""
    from actors.contract import ExecutionRef

    _printed(client().api.pause_workflow(ExecutionRef(execution_id=execution_id)))


@exec_app.command("resume")
def executions_resume(execution_id: str) -> None:
    from actors.contract import ExecutionRef

    _printed(client().api.resume_workflow(ExecutionRef(execution_id=execution_id)))


@exec_app.command("cancel")
def executions_cancel(execution_id: str, reason: Annotated[str, typer.Option()] = "") -> None:
    """Cancel the execution; running steps are cancelled through Ray."""
    from actors.contract import CancelExecution

    cancel = CancelExecution(execution_id=execution_id, by=_who(), reason=reason)
    _printed(client().api.cancel_workflow(cancel))


@exec_app.command("approve")
def executions_approve(
    execution_id: str, step: str, reason: Annotated[str, typer.Option()] = ""
) -> None:
    """Approve STEP, waiting at its approval gate."""
    _printed(_decide(execution_id, step, True, reason))


@exec_app.command("reject")
def executions_reject(
    execution_id: str, step: str, reason: Annotated[str, typer.Option()] = ""
) -> None:
    """Reject STEP, waiting at its approval gate (the step fails)."""
    _printed(_decide(execution_id, step, False, reason))


def _decide(execution_id: str, step: str, approved: bool, reason: str) -> Execution:
    """`decide_step`, as REST's approve and reject routes and gRPC's ApproveStep call it."""
    from actors.contract import DecideStep

    decision = DecideStep(
        execution_id=execution_id, step=step, approved=approved, by=_who(), reason=reason
    )
    return client().api.decide_step(decision)


@exec_app.command("retry")
def executions_retry(execution_id: str) -> None:
    """Run a failed or cancelled execution again from the steps that did not succeed."""
    from actors.contract import ExecutionRef

    _printed(client().api.retry_workflow(ExecutionRef(execution_id=execution_id)))


@exec_app.command("purge")
def executions_purge(
    ids: Annotated[list[str] | None, typer.Argument(help="Execution ids; none: by age.")] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Only those that ended this long ago: 90s, 30m, 12h, 7d.")
    ] = None,
    status: Annotated[
        str, typer.Option(help="Comma-separated statuses to purge.")
    ] = "succeeded,failed,cancelled",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Delete finished executions with their events, outputs, blobs, journals and spans.

    Running, paused and waiting executions are never purged (they are listed as active).
    """
    import asyncio

    from cluster.cli.common import GlobalOptions
    from cluster.retention import Purger, check_statuses, parse_duration

    try:
        statuses = check_statuses(status.split(","))
        age = None if older_than is None else parse_duration(older_than)
    except ValueError as exc:
        raise InputInvalid("--status/--older-than", [str(exc)]) from None
    if not ids and age is None:
        raise InputInvalid("ids/--older-than", ["give execution ids, --older-than or both"])
    executions = client("fail").workflows.executions
    policy = GlobalOptions.settings().retention.for_tenant(executions.store.tenant)
    purger = Purger(executions.store, executions.blobs.dir, policy.usage_days)

    async def purge() -> Any:
        cutoff = None if age is None else time.time() - age
        chosen = ids or await purger.expired(cutoff or 0.0, statuses)
        return await purger.purge(chosen, cutoff=cutoff, statuses=statuses, batch=policy.batch)

    report = asyncio.run(purge())
    if as_json:
        print_json(report.as_dict())
        return
    console.print(f"purged {len(report.purged)} executions ({report.blobs_deleted} with blobs)")
    for execution_id, state in report.active.items():
        err.print(f"[yellow]{execution_id}[/]: {state}, not purged (it has not ended)")
    for execution_id in report.missing:
        err.print(f"{execution_id}: not found")


def _who() -> str:
    return f"cli:{getpass.getuser()}"


__all__ = ["exec_app", "run", "submit"]
