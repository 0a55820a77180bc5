"""The README's demo: the repository review workflow, run by three agents with live progress.

`configs/workflows/review.yaml` lists the files (`repo.list`), fans out one analyser task
per file over a pool of four replicas (`code.analyse`, answering with Arrow tables), and
merges the tables into a Markdown report (`report.merge`).

The directory reviewed is the agents' workspace (their spec's `config.root`): they read
nothing outside it, and the report-writer writes only `--output` (its directory and name
are set in its spec here, not passed to the task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.cli.progress import watch
from cluster.errors import TaskFailed

ANALYSER_REPLICAS = 4


def run_review(
    client: Any, root: Path, output: Path, agents: Path, workflow: Path, console: Console
) -> dict[str, Any]:
    """Apply the agents, run the review workflow on `root`, and show its summary.

    Raises:
        TaskFailed: the execution did not succeed; SpecInvalid: a spec file is invalid.
    """
    from actors.client import load_agent_specs
    from actors.examples.review import review_specs

    for record in client.agents.apply(review_specs(load_agent_specs(agents), root, output)):
        console.print(f"agent {record.agent_id}: {', '.join(record.spec.capabilities)}")
    client.agents.scale("file-analyser", ANALYSER_REPLICAS)
    (definition,) = client.workflows.define(workflow)
    # Agents run in other processes: give them absolute paths.
    execution = client.workflows.run(definition["name"], {"root": str(root.resolve())}, wait=False)
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
