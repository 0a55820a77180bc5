"""`dafnck`: the operator's command line (typer + rich).

The commands live by group in `cli_cluster`, `cli_agents`, `cli_executions`, `cli_auth`
and `cli_obs`; this module builds the app from them and runs it. Errors the platform
raises on purpose are printed as one readable message (the file, line and field for bad
specs) with exit code 2 for bad input and 1 otherwise; never a stack trace.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cluster.cli import cluster as cli_cluster
from cluster.cli import execution_controls  # noqa: F401  (its commands join `executions`)
from cluster.cli import executions as cli_executions
from cluster.cli.agents import agents_app, task_app
from cluster.cli.auth import auth_app
from cluster.cli.common import GlobalOptions, err
from cluster.cli.executions import exec_app
from cluster.errors import ConfigError, DafnckError, SpecInvalid

app = typer.Typer(
    name="dafnck", help="DafnckMachine: AI agents as Ray actors.", no_args_is_help=True
)

#: Top-level commands, in the order `dafnck --help` lists them.
_COMMANDS = (
    cli_cluster.up,
    cli_cluster.down,
    cli_cluster.status,
    cli_executions.run,
    cli_executions.submit,
    cli_cluster.backup,
    cli_cluster.backups,
    cli_cluster.restore,
    cli_cluster.demo,
    cli_cluster.bench,
)
for _command in _COMMANDS:
    app.command()(_command)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write configs/.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write editable copies of the example agents and workflows to DIRECTORY/configs/."""
    from cluster.cli.common import console
    from cluster.cli.init import write_examples

    for path in write_examples(directory, force=force):
        console.print(f"wrote {path}")
    console.print("Edit them, then: dafnck up && dafnck agents apply -f configs/agents/review.yaml")


app.add_typer(agents_app, name="agents")
app.add_typer(task_app, name="task")
app.add_typer(exec_app, name="executions")
app.add_typer(auth_app, name="auth", help="API keys and users (written straight to the store).")


@app.callback()
def _options(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings YAML file.")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray address to join.", envvar="RAY_ADDRESS")
    ] = None,
) -> None:
    GlobalOptions.config = config
    GlobalOptions.address = address


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
