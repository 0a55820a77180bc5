"""A live table of an execution's steps, fed by its event stream (for `dafnck run`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

#: Step event type -> the status it leaves the step in.
_STEP_STATUS = {
    "step.queued": "queued",
    "step.started": "running",
    "step.retried": "retrying",
    "step.fallback": "fallback",
    "step.waiting_approval": "waiting approval",
    "step.approved": "queued",
    "step.succeeded": "succeeded",
    "step.failed": "failed",
    "step.skipped": "skipped",
}
_COLOURS = {"succeeded": "green", "failed": "red", "running": "cyan", "retrying": "yellow",
            "waiting approval": "magenta", "skipped": "dim", "cancelled": "red"}  # fmt: skip
#: Exit codes of `dafnck run` by how the execution ended.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}


@dataclass
class _Step:
    status: str = "pending"
    attempts: int = 0
    items_done: int = 0
    items_failed: int = 0
    started: float | None = None
    ended: float | None = None
    note: str = ""


@dataclass
class StepBoard:
    """What the table shows, folded from events."""

    steps: dict[str, _Step]
    status: str = "running"
    events: int = 0
    prompts: list[str] = field(default_factory=list)

    def apply(self, kind: str, step: str | None, data: dict[str, Any], at: float) -> None:
        self.events += 1
        if kind.startswith("execution."):
            self.status = kind.split(".", 1)[1].replace("_", " ")
            return
        if step is None:
            return
        base, _, item = step.partition("[")
        row = self.steps.setdefault(base, _Step())
        if item:
            row.items_done += kind == "step.item.succeeded"
            row.items_failed += kind == "step.item.failed"
            return
        if kind in _STEP_STATUS:
            row.status = _STEP_STATUS[kind]
        if kind in ("step.queued", "step.started"):
            row.started = row.started or at
        if kind == "step.started":
            row.attempts = int(data.get("attempt", row.attempts + 1))
        if kind in ("step.succeeded", "step.failed", "step.skipped"):
            row.ended = at
            row.note = (data.get("error") or {}).get("message", "") or data.get("reason", "")
        if kind == "step.waiting_approval":
            row.note = str(data.get("prompt", ""))
            self.prompts.append(f"{step}: {row.note}")

    def table(self, title: str) -> Table:
        table = Table("step", "status", "attempts", "items", "seconds", "note", title=title)
        for step_id, row in self.steps.items():
            colour = _COLOURS.get(row.status, "white")
            items = (
                f"{row.items_done}" + (f" ({row.items_failed} failed)" if row.items_failed else "")
                if row.items_done or row.items_failed
                else ""
            )
            seconds = f"{(row.ended or time.time()) - row.started:.1f}" if row.started else ""
            table.add_row(
                step_id,
                f"[{colour}]{row.status}[/]",
                str(row.attempts or ""),
                items,
                seconds,
                row.note[:60],
            )
        table.caption = f"execution {self.status} · {self.events} events"
        return table


def watch(workflows: Any, execution: Any, console: Console) -> Any:
    """Follow `execution` until it ends, redrawing the table on every event batch."""
    board = StepBoard({step_id: _Step() for step_id in execution.steps})
    title = f"{execution.workflow} v{execution.version} · {execution.id}"
    cursor = "0-0"
    with Live(board.table(title), console=console, refresh_per_second=8) as live:
        while True:
            batch = workflows.events(execution.id, cursor, block_ms=500)
            for event_id, event in batch:
                cursor = event_id
                board.apply(event.type, event.step, event.data, event.at)
            live.update(board.table(title))
            if board.status in EXIT_CODES:
                break
    return workflows.status(execution.id)
