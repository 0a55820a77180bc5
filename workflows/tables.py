"""Arrow tables in an execution, as people see it: each one summarised, never sent whole.

A step's output may hold Arrow tables (the review demo's analysers answer with them).
REST, gRPC, the CLI and the dashboard show an execution through `execution_view`, where
each table is replaced by

    {"$table": {"rows": 12, "columns": ["path", "lines"], "stored_at": "outputs/<e>/<s>/0.parquet"}}

`stored_at` is the Parquet file the store keeps it in, relative to the tenant's blob
directory (`<blobs>/<tenant>/`); a workflow output's tables are kept under
`outputs/<e>/_outputs/`. The summary is for display only: nothing reads it back as a table or a file
reference (the store keeps its references beside the output, never inside it), so data
shaped like it is shown, at worst, as a summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from cluster.blobs import segment
from workflows.execution import Execution, StepState
from workflows.store import OUTPUTS_DIR, BlobPath, lift_tables, place_table

#: The key of a table's summary.
TABLE_KEY = "$table"


def table_key(execution_id: str, step_id: str, index: int) -> str:
    """Where the store keeps a step output's `index`-th table, relative to the tenant's
    blob directory (`ExecutionStore.encode_step` writes it there)."""
    return f"outputs/{segment(execution_id)}/{segment(step_id)}/{index}.parquet"


def summary(table: pa.Table, stored_at: str | None = None) -> dict[str, Any]:
    """One table as its rows, its column names and where it is kept."""
    return {
        TABLE_KEY: {
            "rows": table.num_rows,
            "columns": list(table.schema.names),
            "stored_at": stored_at,
        }
    }


def summarise(value: Any, stored_at: Callable[[int], str | None] | None = None) -> Any:
    """`value` (JSON-like) with each Arrow table replaced by its summary.

    Tables are numbered in the order the store writes them; `stored_at(n)` says where the
    n-th is kept.
    """
    found: list[tuple[BlobPath, Any]] = []
    lifted = lift_tables(value, (), found)
    for index, (path, table) in enumerate(found):
        where = stored_at(index) if stored_at else None
        lifted = place_table(lifted, path, summary(table, where))  # type: ignore[arg-type]
    return lifted


def execution_view(execution: Execution) -> dict[str, Any]:
    """The execution as JSON, each table in its steps' outputs and its outputs summarised."""
    steps = {
        step_id: state.model_copy(update={"output": _step_output(execution.id, step_id, state)})
        for step_id, state in execution.steps.items()
    }
    outputs = summarise(
        execution.outputs,
        lambda index: f"outputs/{segment(execution.id)}/{OUTPUTS_DIR}/{index}.parquet",
    )
    shown = execution.model_copy(update={"steps": steps, "outputs": outputs})
    return shown.model_dump(mode="json")


def _step_output(execution_id: str, step_id: str, state: StepState) -> Any:
    return summarise(state.output, lambda index: table_key(execution_id, step_id, index))


__all__ = ["TABLE_KEY", "execution_view", "summarise", "summary", "table_key"]
