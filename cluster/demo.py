"""The README's demo: the repository review workflow, run by three agents with live progress.

`configs/workflows/review.yaml` lists the files (`repo.list`), fans out one analyser task
per file over a pool of four replicas (`code.analyse`, answering with Arrow tables), and
merges the tables into a Markdown report (`report.merge`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.errors import TaskFailed
from cluster.progress import watch

ANALYSER_REPLICAS = 4


def run_review(
    client: Any, root: Path, output: Path, agents: Path, workflow: Path, console: Console
) -> dict[str, Any]:
    """Apply the agents, run the review workflow on `root`, and show its summary.

    Raises:
        TaskFailed: the execution did not succeed; SpecInvalid: a spec file is invalid.
    """
    for record in client.agents.apply(agents):
        console.print(f"agent {record.agent_id}: {', '.join(record.spec.capabilities)}")
    client.agents.scale("file-analyser", ANALYSER_REPLICAS)
    (definition,) = client.workflows.define(workflow)
    # Agents run in other processes: give them absolute paths.
    inputs = {"root": str(root.resolve()), "output": str(output.resolve())}
    execution = client.workflows.run(definition["name"], inputs, wait=False)
    done = watch(client.workflows, execution, console)
    if done.status.value != "succeeded":
        raise TaskFailed(
            f"execution {done.id} {done.status.value}: {done.error.message if done.error else ''}"
        )
    _show(done.outputs, console)
    return dict(done.outputs)


def _show(outputs: dict[str, Any], console: Console) -> None:
    table = Table("measure", "value", title="review summary")
    for key, value in outputs["summary"].items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)
