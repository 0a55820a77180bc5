"""Arrow tables in step outputs against the real session Valkey: each tenant's tables under
its own root, referenced out of band; nothing inside an output is read as a file name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.errors import Conflict, InputInvalid, NotFound
from cluster.store import Store
from workflows.execution import Execution, StepState, StepStatus
from workflows.store import BLOBS_FIELD, BlobStore, ExecutionStore


def executions_of(store: Store, root: Path | str, tenant: str = "acme") -> ExecutionStore:
    return ExecutionStore(store.for_tenant(tenant), BlobStore(str(root)))


def save(executions: ExecutionStore, output: Any, step: str = "a") -> Execution:
    execution = Execution(workflow="w", version=1)
    execution.steps[step] = StepState(status=StepStatus.SUCCEEDED, output=output)
    executions.commit(execution, steps=[step])
    return execution


def raw_step(executions: ExecutionStore, execution_id: str, step: str = "a") -> dict[str, Any]:
    raw = executions.store.redis.hget(executions.store.key("exec", execution_id), f"step:{step}")
    return dict(json.loads(raw))


def planted(path: Path) -> Path:
    """A real Parquet file someone would like read: another tenant's output, say."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"secret": ["tenant A's data"]}), path)
    return path


def test_an_arrow_marker_returned_by_an_agent_stays_a_plain_dict(
    store: Store, tmp_path: Path
) -> None:
    victim = planted(tmp_path / "blobs" / "victim" / "outputs" / "e" / "a" / "0.parquet")
    executions = executions_of(store, tmp_path / "blobs", "mallory")
    forged = {"$arrow": str(victim), "nested": [{"$arrow": str(victim)}]}
    execution = save(executions, forged)
    loaded = executions.load(execution.id).steps["a"].output
    assert loaded == forged  # the same dicts, not the victim's table
    assert BLOBS_FIELD not in raw_step(executions, execution.id)


def test_a_legacy_record_with_an_arrow_marker_loads_as_a_dict(store: Store, tmp_path: Path) -> None:
    """Steps stored before out-of-band references kept `{"$arrow": <path>}`: no longer trusted."""
    victim = planted(tmp_path / "elsewhere" / "t.parquet")
    executions = executions_of(store, tmp_path / "blobs")
    execution = save(executions, {"n": 1})
    legacy = raw_step(executions, execution.id) | {"output": {"t": {"$arrow": str(victim)}}}
    key = executions.store.key("exec", execution.id)
    executions.store.redis.hset(key, "step:a", json.dumps(legacy))
    assert executions.load(execution.id).steps["a"].output == {"t": {"$arrow": str(victim)}}


def test_tables_round_trip_under_the_tenants_own_outputs(store: Store, tmp_path: Path) -> None:
    executions = executions_of(store, tmp_path / "blobs", "acme")
    t1, t2 = pa.table({"n": [1, 2]}), pa.table({"s": ["x"]})
    output = {"tables": ["keep", t1, {"deep": t2}], "n": 3, "none": None}
    execution = save(executions, output)

    stored = raw_step(executions, execution.id)
    assert stored["output"] == {"tables": ["keep", None, {"deep": None}], "n": 3, "none": None}
    refs = stored[BLOBS_FIELD]
    assert [path for path, _ in refs] == [["tables", 1], ["tables", 2, "deep"]]
    files = sorted(
        p.relative_to(tmp_path / "blobs") for p in (tmp_path / "blobs").rglob("*.parquet")
    )
    assert files == [Path(f"acme/outputs/{execution.id}/a/{i}.parquet") for i in (0, 1)]
    assert all(not Path(key).is_absolute() and ".." not in key for _, key in refs)

    loaded = executions.load(execution.id).steps["a"].output
    assert loaded["tables"][1].equals(t1) and loaded["tables"][2]["deep"].equals(t2)
    assert loaded["tables"][0] == "keep" and loaded["n"] == 3 and loaded["none"] is None


def test_a_table_as_the_whole_output_and_a_rerun_without_tables(
    store: Store, tmp_path: Path
) -> None:
    executions = executions_of(store, tmp_path / "blobs")
    execution = save(executions, pa.table({"n": [7]}))
    assert executions.load(execution.id).steps["a"].output.column("n").to_pylist() == [7]
    execution.steps["a"] = StepState(status=StepStatus.SUCCEEDED, output=None)
    executions.commit(execution, steps=["a"])
    assert BLOBS_FIELD not in raw_step(executions, execution.id)
    assert executions.load(execution.id).steps["a"].output is None


def test_dict_keys_never_become_paths(store: Store, tmp_path: Path) -> None:
    """The layout before wrote `<root>/<exec>/<step>.<dict key>.parquet`: "../.." climbed out."""
    executions = executions_of(store, tmp_path / "root" / "blobs")
    execution = save(executions, {"../../../escaped": pa.table({"n": [1]}), 5: "int key"})
    written = list((tmp_path / "root").rglob("*.parquet"))
    assert [p.parent for p in written] == [
        tmp_path / "root/blobs/acme/outputs" / execution.id / "a"
    ]
    loaded = executions.load(execution.id).steps["a"].output
    assert loaded["../../../escaped"].num_rows == 1 and loaded["5"] == "int key"


@pytest.mark.parametrize(
    "ref",
    [
        [["t"], "/etc/passwd"],
        [["t"], "../../victim/outputs/e/a/0.parquet"],
        [["t"], "file:///etc/passwd"],
        [["t"], "ok/./0.parquet"],
    ],
)
def test_a_forged_reference_outside_the_tenants_root_is_refused(
    store: Store, tmp_path: Path, ref: list[Any]
) -> None:
    planted(tmp_path / "blobs" / "victim" / "outputs" / "e" / "a" / "0.parquet")
    executions = executions_of(store, tmp_path / "blobs", "mallory")
    execution = save(executions, {"t": None})
    record = raw_step(executions, execution.id) | {BLOBS_FIELD: [ref]}
    executions.store.redis.hset(
        executions.store.key("exec", execution.id), "step:a", json.dumps(record)
    )
    with pytest.raises(Conflict, match="refused"):
        executions.load(execution.id)


def test_a_reference_only_fills_the_slot_the_store_emptied(store: Store, tmp_path: Path) -> None:
    executions = executions_of(store, tmp_path / "blobs")
    execution = save(executions, {"t": pa.table({"n": [1]}), "kept": "agent data"})
    record = raw_step(executions, execution.id)
    record[BLOBS_FIELD] = [[["kept"], record[BLOBS_FIELD][0][1]]]
    executions.store.redis.hset(
        executions.store.key("exec", execution.id), "step:a", json.dumps(record)
    )
    with pytest.raises(Conflict, match="does not lead to an emptied slot"):
        executions.load(execution.id)


def test_a_missing_table_file_is_not_found(store: Store, tmp_path: Path) -> None:
    executions = executions_of(store, tmp_path / "blobs")
    execution = save(executions, {"t": pa.table({"n": [1]})})
    for path in (tmp_path / "blobs").rglob("*.parquet"):
        path.unlink()
    with pytest.raises(NotFound, match="output table"):
        executions.load(execution.id)


def test_two_tenants_on_one_root_write_apart(store: Store, tmp_path: Path) -> None:
    a, b = executions_of(store, tmp_path, "ta"), executions_of(store, tmp_path, "tb")
    save(a, {"t": pa.table({"n": [1]})})
    save(b, {"t": pa.table({"n": [2]})})
    tops = {p.relative_to(tmp_path).parts[:2] for p in tmp_path.rglob("*.parquet")}
    assert tops == {("ta", "outputs"), ("tb", "outputs")}


def test_a_uri_root_is_joined_with_slashes(store: Store, tmp_path: Path) -> None:
    executions = executions_of(store, f"file://{tmp_path}/blobs/")
    execution = save(executions, [pa.table({"n": [1]})])
    assert (tmp_path / "blobs/acme/outputs" / execution.id / "a/0.parquet").exists()
    assert executions.load(execution.id).steps["a"].output[0].num_rows == 1


def test_blob_store_keys_must_be_relative(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path), "acme", "outputs")
    for key in ("/abs.parquet", "../x.parquet", "a//b", "", "a\\b", "s3://bucket/k"):
        with pytest.raises(InputInvalid, match="blob key"):
            blobs.get(key)
    with pytest.raises(InputInvalid):
        BlobStore(str(tmp_path)).scoped("..", "outputs")
