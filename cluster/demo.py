"""The README's demo: a repository review by three agents, with live progress.

The lister finds the files, a pool of analyser replicas measures them in parallel
batches (each answering with Arrow tables), and the report writer merges the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.errors import TaskFailed

BATCH_FILES = 8


def _ok(result: Any) -> Any:
    if not result.ok:
        raise TaskFailed(f"{result.agent}: {result.error.message}", result.error.type)
    return result.output


def run_review(
    client: Any, root: Path, output: Path, agents: Path, console: Console
) -> dict[str, Any]:
    """Run the review of `root`; returns the report writer's summary.

    Raises:
        TaskFailed: an agent failed; SpecInvalid: the demo's agent specs are invalid.
    """
    console.print(f"applying agents from {agents}")
    for record in client.agents.apply(agents):
        console.print(f"  {record.agent_id}: {', '.join(record.spec.capabilities)}")
    client.agents.scale("file-analyser", 4)
    listing = _ok(client.tasks.run("repo.list", {"root": str(root)}))
    files: list[str] = listing["files"]
    batches = [files[i : i + BATCH_FILES] for i in range(0, len(files), BATCH_FILES)]
    functions, tables, replicas = [], [], set()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"analysing {len(files)} files", total=len(files))
        pending = [client.tasks.submit("code.analyse", {"paths": batch}) for batch in batches]
        for call, batch in zip(pending, batches, strict=True):
            result = client.tasks.result(call)
            out = _ok(result)
            functions.append(out["functions"])
            tables.append(out["files"])
            replicas.add(result.replica)
            progress.advance(bar, len(batch))
    console.print(f"{len(batches)} batches measured by {len(replicas)} analyser replicas")
    report = _ok(client.tasks.run("report.merge", {
        "root": listing["root"], "functions": functions, "files": tables, "output": str(output.resolve()),
    }))  # fmt: skip
    _show(report, console)
    return dict(report)


def _show(report: dict[str, Any], console: Console) -> None:
    table = Table("measure", "value", title="review summary")
    for key, value in report["summary"].items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)
    worst = Table("function", "line", "complexity", title="most complex functions")
    for row in report["top"]:
        worst.add_row(
            row["function"], f"{Path(row['path']).name}:{row['line']}", str(row["complexity"])
        )
    console.print(worst)
