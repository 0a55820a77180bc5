"""An execution's Arrow tables are shown as summaries: rows, columns, and the Parquet file
the store really wrote them to; the rest of the output is left as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.store import Store
from workflows.execution import Execution, StepState, StepStatus
from workflows.store import BlobStore, ExecutionStore
from workflows.tables import TABLE_KEY, execution_view, summarise

T2 = pa.table({"path": ["a.py", "b.py"], "lines": [3, 4]})
T0 = pa.table({"n": pa.array([], pa.int64())})


def test_tables_anywhere_in_a_value_become_summaries_and_the_rest_stays() -> None:
    value = {"files": T2, "items": [T0, {"deep": T2, "n": 1}], "text": "x", "tuple": (T0,)}
    seen: list[int] = []

    def where(index: int) -> str:
        seen.append(index)
        return f"k{index}"

    shown = summarise(value, where)
    assert shown == {
        "files": {TABLE_KEY: {"rows": 2, "columns": ["path", "lines"], "stored_at": "k0"}},
        "items": [
            {TABLE_KEY: {"rows": 0, "columns": ["n"], "stored_at": "k1"}},
            {"deep": {TABLE_KEY: {"rows": 2, "columns": ["path", "lines"], "stored_at": "k2"}},
             "n": 1},
        ],
        "text": "x",
        "tuple": [{TABLE_KEY: {"rows": 0, "columns": ["n"], "stored_at": "k3"}}],
    }  # fmt: skip
    assert seen == [0, 1, 2, 3]
    assert value["files"] is T2  # the value itself is not changed
    assert summarise(T2) == {
        TABLE_KEY: {"rows": 2, "columns": ["path", "lines"], "stored_at": None}
    }
    assert summarise({"a": [1, {"b": None}]}) == {"a": [1, {"b": None}]}


def test_the_view_names_the_parquet_file_the_store_wrote(store: Store, tmp_path: Path) -> None:
    executions = ExecutionStore(store, BlobStore(str(tmp_path)))
    execution = Execution(workflow="w", version=1, outputs={"n": 2})
    execution.steps["analyse[0]"] = StepState(
        status=StepStatus.SUCCEEDED, output={"functions": T0, "files": T2}
    )
    executions.commit(execution, steps=["analyse[0]"])

    shown = execution_view(executions.load(execution.id))
    json.dumps(shown)  # plain JSON all the way down
    files = shown["steps"]["analyse[0]"]["output"]["files"][TABLE_KEY]
    assert files["rows"] == 2 and files["columns"] == ["path", "lines"]
    written = pq.read_table(tmp_path / store.tenant / files["stored_at"])
    assert written.equals(T2)
    functions = shown["steps"]["analyse[0]"]["output"]["functions"][TABLE_KEY]
    assert pq.read_table(tmp_path / store.tenant / functions["stored_at"]).equals(T0)
    assert shown["outputs"] == {"n": 2}
