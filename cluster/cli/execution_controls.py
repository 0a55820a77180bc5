"""`dafnck executions signal | cancel-step | skip-step`: the engine's finer controls.

Each command calls one operation of the supervisor's contract by name through `Client.api`
(`signal_execution`, `cancel_step`, `skip_step`), as REST and gRPC do. The commands are
added to `cluster.cli.executions.exec_app` when this module is imported (`cluster.cli.main`).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cluster.cli.common import client, console
from cluster.cli.executions import exec_app
from cluster.errors import InputInvalid


def _payload(text: str | None, file: Path | None) -> Any:
    """The signal's payload: JSON from `--payload` or `--payload-file` (None if neither).

    Raises: InputInvalid naming the option and where the JSON went wrong.
    """
    if text is not None and file is not None:
        raise InputInvalid("--payload/--payload-file", ["give one of them, not both"])
    option, source = ("--payload", text) if file is None else ("--payload-file", None)
    if file is not None:
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputInvalid("--payload-file", [f"{file}: {exc}"]) from None
    if source is None:
        return None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
        raise InputInvalid(option, [f"not JSON at {where}: {exc.msg}"]) from None


@exec_app.command("signal")
def executions_signal(
    execution_id: str,
    name: str,
    payload: Annotated[str | None, typer.Option(help="The payload, as JSON.")] = None,
    payload_file: Annotated[
        Path | None, typer.Option(help="A file holding the payload, as JSON.")
    ] = None,
) -> None:
    """Send signal NAME: a step waiting for it takes the payload as its output."""
    from actors.contract import SignalExecution

    data = _payload(payload, payload_file)
    request = SignalExecution(execution_id=execution_id, name=name, payload=data)
    execution = client().api.signal_execution(request)
    console.print(f"execution {execution.id}: {execution.status.value} (signal {name} sent)")


@exec_app.command("cancel-step")
def executions_cancel_step(
    execution_id: str, step: str, reason: Annotated[str, typer.Option()] = ""
) -> None:
    """Cancel STEP (its running work too); the rest of the execution goes on."""
    _ended(execution_id, step, reason, skip=False)


@exec_app.command("skip-step")
def executions_skip_step(
    execution_id: str, step: str, reason: Annotated[str, typer.Option()] = ""
) -> None:
    """Skip STEP, as if its `when` were false (running work is cancelled)."""
    _ended(execution_id, step, reason, skip=True)


def _ended(execution_id: str, step: str, reason: str, *, skip: bool) -> None:
    from actors.contract import StepAction

    action = StepAction(
        execution_id=execution_id, step=step, by=f"cli:{getpass.getuser()}", reason=reason
    )
    api = client().api
    execution = api.skip_step(action) if skip else api.cancel_step(action)
    state = execution.steps[step].status.value if step in execution.steps else "?"
    console.print(f"execution {execution.id}: {execution.status.value}; step {step}: {state}")


__all__ = ["executions_cancel_step", "executions_signal", "executions_skip_step"]
