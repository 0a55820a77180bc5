"""`dafnck`: the operator's command line (typer + rich).

Errors the platform raises on purpose are printed as one readable message (the file,
line and field for bad specs) with exit code 2 for bad input and 1 otherwise; never a
stack trace.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.errors import ConfigError, DafnckError, InputInvalid, SpecInvalid
from cluster.settings import Settings, load_settings

app = typer.Typer(
    name="dafnck", help="DafnckMachine: AI agents as Ray actors.", no_args_is_help=True
)
agents_app = typer.Typer(help="Create, list, scale and remove agents.", no_args_is_help=True)
task_app = typer.Typer(help="Run tasks on agents.", no_args_is_help=True)
exec_app = typer.Typer(help="List, inspect and control workflow executions.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(task_app, name="task")
app.add_typer(exec_app, name="executions")


def _auth_commands() -> None:
    from cluster.cli_auth import auth_app

    app.add_typer(auth_app, name="auth", help="API keys and users (written straight to the store).")


_auth_commands()


def _observability_commands() -> None:
    from cluster.cli_obs import register

    register(exec_app, lambda: _client("fail"), console)

console = Console()
err = Console(stderr=True)
_observability_commands()


class _State:
    config: Path | None = None
    address: str | None = None

    @classmethod
    def settings(cls) -> Settings:
        return load_settings(cls.config)


@app.callback()
def _options(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings YAML file.")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray address to join.", envvar="RAY_ADDRESS")
    ] = None,
) -> None:
    _State.config = config
    _State.address = address


def _client(missing: str = "start_head") -> Any:
    from actors.client import connect

    settings = _State.settings()
    if settings.redis_url is None and (_State.address or settings.ray_address):
        settings = _joined_store(settings)
    return connect(_State.address, settings, missing=missing)  # type: ignore[arg-type]


def _joined_store(settings: Settings) -> Settings:
    """On a cluster joined by address (a Ray job's driver), use the store its supervisor uses."""
    from actors.system import joined_store_url
    from cluster.ray_runtime import init_ray

    init_ray(settings, _State.address, missing="fail")
    url = joined_store_url(settings.tenant)
    return settings.model_copy(update={"redis_url": url}) if url else settings


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=_jsonable))


def _jsonable(value: Any) -> Any:
    """Arrow tables print as their shape and first rows; anything else as its str()."""
    if hasattr(value, "to_pylist") and hasattr(value, "num_rows"):
        return {
            "arrow_table": {
                "rows": value.num_rows,
                "columns": value.column_names,
                "head": value.slice(0, 5).to_pylist(),
            }
        }
    return str(value)


# -- cluster ---------------------------------------------------------------------------


@app.command()
def up(
    num_cpus: Annotated[int | None, typer.Option(help="CPUs the local Ray head offers.")] = None,
) -> None:
    """Start (or join) the cluster: Ray head, embedded Valkey, and the system actors."""
    from actors.system import ensure_supervisor
    from cluster.ray_runtime import address_to_join, init_ray, start_head
    from cluster.store import redacted, resolve_redis_url

    settings = _State.settings()
    with console.status("starting DafnckMachine..."):
        url = resolve_redis_url(settings)
        if address_to_join(settings, _State.address) is None:
            start_head(settings, num_cpus)
        dashboard = init_ray(settings, _State.address, missing="fail")
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
    console.print("[green]DafnckMachine is up.[/] Try: dafnck agents apply -f configs/agents/")


def _start_api(settings: Settings, redis_url: str) -> str:
    if not settings.api_port:
        return ""
    from serve.deployment import start_api

    return start_api(
        settings.model_copy(update={"redis_url": redis_url}), settings.api_host, settings.api_port
    )


@app.command()
def down() -> None:
    """Stop what `dafnck up` started here: the Ray head and the embedded Valkey (its AOF stays)."""
    from cluster.ray_runtime import recorded_cluster, stop_head
    from cluster.valkey import stop_valkey

    settings = _State.settings()
    stopped = stop_head(settings) if recorded_cluster(settings) else 0
    valkey = False if settings.redis_url else stop_valkey(settings.state_dir)
    console.print(
        f"stopped {stopped} Ray process(es)" + ("; embedded Valkey stopped" if valkey else "")
    )


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Cluster resources, system actors, and each pool's replicas, health and load."""
    health = _client("fail").health()
    if as_json:
        _print_json(health)
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
    for agent_id, pool in health["pools"].items():
        table.add_row(
            agent_id, pool["status"], ", ".join(pool["capabilities"]),
            f"{pool['running']}/{pool['desired']}", str(pool["in_flight"]),
            str(pool["completed"]), str(pool["restarts"]),
        )  # fmt: skip
    console.print(table)
    if "components" in health:
        from cluster.cli_obs import components_table

        console.print(components_table(health))


# -- agents ----------------------------------------------------------------------------


@agents_app.command("apply")
def agents_apply(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="A spec YAML file or a directory of them.")
    ],
) -> None:
    """Create or update agents from YAML; applying the same file again changes nothing."""
    from actors.client import load_agent_specs

    specs = load_agent_specs(file)  # validate every file before touching the cluster
    records = _client().agents.apply(specs)
    for record in records:
        console.print(
            f"agent [bold]{record.agent_id}[/] applied ({', '.join(record.spec.capabilities)})"
        )


@agents_app.command("ls")
def agents_ls(
    capability: Annotated[str | None, typer.Option(help="Only agents serving this.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List registered agents."""
    from actors.models import DiscoveryCriteria

    records = _client().agents.ls(DiscoveryCriteria(capability=capability))
    if as_json:
        _print_json([r.model_dump(mode="json") for r in records])
        return
    table = Table("agent", "status", "capabilities", "replicas", "kind", "entrypoint")
    for r in records:
        spec = r.spec
        replicas = f"{r.desired_replicas} ({spec.replicas.min}..{spec.replicas.max})"
        table.add_row(
            r.agent_id,
            r.status.value,
            ", ".join(spec.capabilities),
            replicas,
            spec.kind,
            spec.entrypoint or (f"{spec.llm.provider}:{spec.llm.model}" if spec.llm else ""),
        )
    console.print(table)


@agents_app.command("scale")
def agents_scale(name: str, replicas: int) -> None:
    """Set the number of replicas of NAME (every version, or NAME@RANGE)."""
    for record in _client().agents.scale(name, replicas):
        console.print(f"{record.agent_id} scaled to {record.desired_replicas}")


@agents_app.command("rm")
def agents_rm(name: str) -> None:
    """Remove NAME (every version, or NAME@RANGE) and stop its replicas."""
    for agent_id in _client().agents.rm(name):
        console.print(f"{agent_id} removed")


# -- tasks -----------------------------------------------------------------------------


@task_app.command("run")
def task_run(
    capability: str,
    input: Annotated[
        str, typer.Option("--input", "-i", help="Task input as a JSON object.")
    ] = "{}",
    agent: Annotated[str | None, typer.Option(help="Only this agent: NAME or NAME@RANGE.")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds before the task times out.")
    ] = None,
) -> None:
    """Run one task on whichever agent serves CAPABILITY and print its result."""
    try:
        data = json.loads(input)
    except json.JSONDecodeError as exc:
        raise InputInvalid("--input", [f"not JSON: {exc.msg} at column {exc.colno}"]) from None
    if not isinstance(data, dict):
        raise InputInvalid("--input", [f"must be a JSON object, got {type(data).__name__}"])
    result = _client().tasks.run(capability, data, agent=agent, timeout_s=timeout)
    _print_json(result.model_dump())
    if not result.ok:
        raise typer.Exit(1)


# -- workflows -------------------------------------------------------------------------


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


@app.command()
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
    from cluster.progress import EXIT_CODES, watch
    from workflows.loader import load_workflow_specs

    client = _client()
    records = client.registry.all()
    specs = [  # validated here too, so every problem names its file and line
        spec
        for spec, _ in load_workflow_specs(
            file,
            known_capabilities={c for r in records for c in r.spec.capabilities},
            known_agents={r.spec.name for r in records},
            known_workflows=set(client.workflows.executions.workflows()),
        )
    ]
    for spec in specs:
        client.workflows.define(spec)
    main_spec = specs[-1]
    execution = client.workflows.run(
        main_spec.name, _parse_inputs(input or [], main_spec.inputs), wait=False
    )
    if detach:
        console.print(execution.id)
        return
    done = watch(client.workflows, execution, console)
    if done.outputs is not None:
        _print_json(done.outputs)
    if done.error:
        err.print(f"[red]{done.status.value}:[/] {escape(done.error.message)}")
    raise typer.Exit(EXIT_CODES.get(done.status.value, 4))


@app.command()
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
    from cluster import jobs

    settings = _State.settings()
    env_file = runtime_env or (
        jobs.DEFAULT_RUNTIME_ENV if jobs.DEFAULT_RUNTIME_ENV.exists() else None
    )
    job = jobs.JobSubmission(
        workflow_file=str(file), inputs=input or [], agents=[str(a) for a in agents or []],
        runtime_env=jobs.load_runtime_env(env_file, settings.tenant), tenant=settings.tenant,
        **({"submission_id": submission_id} if submission_id else {}),
    )  # fmt: skip
    jobs.workflow_name(file)  # a missing or nameless file fails here, not on the cluster
    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per file uploaded
    client = jobs.job_client(jobs.dashboard_address(settings, _State.address))
    job_id, submitted = jobs.submit(client, job)
    console.print(f"job {job_id} " + ("submitted" if submitted else "already submitted"))
    if not wait:
        return
    status = jobs.wait(client, job_id, timeout)
    sys.stdout.write(client.get_job_logs(job_id))
    console.print(f"job {job_id}: {status}")
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@exec_app.command("ls")
def executions_ls(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List executions, newest first."""
    executions = _client().workflows.ls(limit)
    if as_json:
        _print_json([e.model_dump(mode="json", exclude={"steps"}) for e in executions])
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
    """One execution: status, inputs, outputs and every step."""
    _print_json(_client().workflows.status(execution_id).model_dump())


@exec_app.command("events")
def executions_events(
    execution_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False
) -> None:
    """The execution's event history (and, with --follow, new events as they come)."""
    workflows = _client().workflows
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


def _control(action: str, execution_id: str, *args: str) -> None:
    execution = getattr(_client().workflows, action)(execution_id, *args)
    console.print(f"execution {execution.id}: {execution.status.value}")


@exec_app.command("pause")
def executions_pause(execution_id: str) -> None:
    """No new step starts; running steps finish."""
    _control("pause", execution_id)


@exec_app.command("resume")
def executions_resume(execution_id: str) -> None:
    _control("resume", execution_id)


@exec_app.command("cancel")
def executions_cancel(execution_id: str, reason: Annotated[str, typer.Option()] = "") -> None:
    """Cancel the execution; running steps are cancelled through Ray."""
    _control("cancel", execution_id, _who(), reason)


@exec_app.command("approve")
def executions_approve(
    execution_id: str, step: str, reason: Annotated[str, typer.Option()] = ""
) -> None:
    """Approve STEP, waiting at its approval gate."""
    _control("approve", execution_id, step, _who(), reason)


@exec_app.command("reject")
def executions_reject(
    execution_id: str, step: str, reason: Annotated[str, typer.Option()] = ""
) -> None:
    """Reject STEP, waiting at its approval gate (the step fails)."""
    _control("reject", execution_id, step, _who(), reason)


@exec_app.command("retry")
def executions_retry(execution_id: str) -> None:
    """Run a failed or cancelled execution again from the steps that did not succeed."""
    _control("retry", execution_id)


def _who() -> str:
    return f"cli:{getpass.getuser()}"


# -- demo and bench --------------------------------------------------------------------


# -- backups ---------------------------------------------------------------------------


@app.command()
def backup(
    label: Annotated[str | None, typer.Option(help="A note kept with the backup.")] = None,
    prefix: Annotated[
        list[str] | None, typer.Option(help="Only keys under this prefix; repeat.")
    ] = None,
) -> None:
    """Snapshot this tenant's state (registry, workflows, executions, messages, data) to Parquet."""
    from cluster.data_models import BackupCriteria

    result = _client().data.backup(BackupCriteria(label=label, prefixes=prefix or []))
    info = result.info
    console.print(
        f"backup {info.backup_id}: {info.counts.keys} keys in {result.duration_s:.2f}s -> {info.uri}"
    )


@app.command()
def backups() -> None:
    """List this tenant's backups."""
    table = Table("backup", "created", "keys", "label", "where")
    for info in _client().data.list_backups():
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at))
        table.add_row(info.backup_id, created, str(info.counts.keys), info.label or "", info.uri)
    console.print(table)


@app.command()
def restore(backup_id: str) -> None:
    """Restore a backup into this tenant's (empty) state and check it against its manifest."""
    result = _client().data.restore(backup_id)
    console.print(
        f"restored {result.keys} keys from {backup_id}; checksum {result.checksum[:16]} matches"
    )


_REVIEW_AGENTS = Path("configs/agents/review.yaml")
_REVIEW_WORKFLOW = Path("configs/workflows/review.yaml")


@app.command()
def demo(
    path: Annotated[Path, typer.Argument(help="The directory to review.")] = Path("."),
    output: Annotated[Path, typer.Option(help="The Markdown report.")] = Path("reports/review.md"),
    agents: Annotated[Path, typer.Option(help="The demo's agent specs.")] = _REVIEW_AGENTS,
    workflow: Annotated[Path, typer.Option(help="The demo's workflow.")] = _REVIEW_WORKFLOW,
    llm: Annotated[
        bool, typer.Option("--llm", help="The LLM demo (needs OPENAI_API_KEY or OPENAI_BASE_URL).")
    ] = False,
    model: Annotated[str | None, typer.Option(help="The LLM demo's model.")] = None,
) -> None:
    """Review a repository with the review workflow and three agents; write a Markdown report.

    With --llm: an LLM agent reads outlines of the files and names the ones to read first."""
    if llm:
        from cluster.llm_demo import run_llm_demo

        run_llm_demo(_client, path, model, console)
        return
    from cluster.demo import run_review

    outputs = run_review(_client(), path, output, agents, workflow, console)
    console.print(f"\n[green]Report written to {outputs['report']}[/]")


@app.command()
def bench(
    suite: Annotated[list[str] | None, typer.Option("--suite", help="Run only this suite.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure DafnckMachine against raw Ray in one run; ratios are what to compare."""
    from cluster.bench import SUITES, render_table, run_bench

    unknown = [s for s in suite or [] if s not in SUITES]
    if unknown:
        raise ConfigError(f"--suite: unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    report = run_bench(_State.settings(), suite or None)
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        console.print(render_table(report))


def main() -> None:
    """Entry point: run the app, turning platform errors into one clear message."""
    logging.getLogger("ray._private.worker").setLevel(logging.WARNING)  # "Connecting to..." lines
    try:
        app()
    except DafnckError as exc:
        err.print(
            "[red]error:[/] "
            + escape(_problems(exc) if isinstance(exc, SpecInvalid) else exc.message)
        )
        sys.exit(2 if isinstance(exc, SpecInvalid | ConfigError) else 1)
    except Exception as exc:
        if os.environ.get("DAFNCK_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        err.print(
            f"[red]unexpected error[/] {type(exc).__name__}: {escape(first)} (DAFNCK_DEBUG=1 shows the traceback)"
        )
        sys.exit(1)


def _problems(exc: SpecInvalid) -> str:
    return "\n".join([f"{exc.args[0]} is invalid:"] + [f"  - {p}" for p in exc.problems])
