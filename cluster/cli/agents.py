"""`dafnck agents` (apply, ls, scale, rm) and `dafnck task run`: agents and their tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cluster.cli.common import client, console, print_json
from cluster.errors import InputInvalid

agents_app = typer.Typer(help="Create, list, scale and remove agents.", no_args_is_help=True)
task_app = typer.Typer(help="Run tasks on agents.", no_args_is_help=True)


@agents_app.command("apply")
def agents_apply(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="A spec YAML file or a directory of them.")
    ],
) -> None:
    """Create or update agents from YAML; applying the same file again changes nothing."""
    from actors.client import load_agent_specs

    specs = load_agent_specs(file)  # validate every file before touching the cluster
    records = client().agents.apply(specs)
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

    records = client().agents.ls(DiscoveryCriteria(capability=capability))
    if as_json:
        print_json([r.model_dump(mode="json") for r in records])
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
    for record in client().agents.scale(name, replicas):
        console.print(f"{record.agent_id} scaled to {record.desired_replicas}")


@agents_app.command("rm")
def agents_rm(name: str) -> None:
    """Remove NAME (every version, or NAME@RANGE) and stop its replicas."""
    for agent_id in client().agents.rm(name):
        console.print(f"{agent_id} removed")


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
    result = client().tasks.run(capability, data, agent=agent, timeout_s=timeout)
    print_json(result.model_dump())
    if not result.ok:
        raise typer.Exit(1)


__all__ = ["agents_app", "task_app"]
