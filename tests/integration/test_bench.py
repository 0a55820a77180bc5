"""`dafnck bench`: the tasks suite runs end to end and reports every figure against raw Ray."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import ray
from rich.console import Console

from cluster.bench.core import SUITES, render_table, run_bench
from cluster.errors import ConfigError
from cluster.settings import RAY_NAMESPACE, Settings

TASKS_FIGURES = {
    "routed_sync_rtt",
    "routed_pipelined_1",
    "routed_pipelined_4",
    "routed_pipelined_16",
    "replica_start_s",
    "replica_uss_mb",
}


def _bench_actors() -> list[str]:
    return [
        e["name"]
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e["namespace"] == RAY_NAMESPACE and e["name"].startswith(("bench-", "supervisor-bench-"))
    ]


@pytest.mark.timeout(30)
def test_tasks_suite_reports_each_figure_next_to_raw_ray(tenant_settings: Settings) -> None:
    report = run_bench(tenant_settings, ["tasks"], quick=True)

    assert json.loads(json.dumps(report)) == report
    assert {"cpus", "python", "ray", "platform", "memory_gb"} <= set(report["machine"])
    assert report["machine"]["ray"] == ray.__version__
    results = report["results"]
    assert {r["name"] for r in results} == TASKS_FIGURES
    for row in results:
        assert set(row) == {"suite", "name", "value", "unit", "baseline", "ratio"}, row
        assert row["suite"] == "tasks"
        assert row["value"] > 0 and row["baseline"] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=1e-3), row
    # The bench tenant's supervisor and replicas are gone; the session's Ray is not.
    assert _bench_actors() == []
    assert ray.is_initialized()
    table = render_table(report)
    assert table.row_count == len(results)
    console = Console(width=120, file=io.StringIO(), record=True)
    console.print(table)
    assert "routed_pipelined_16" in console.export_text()


def test_unknown_suite_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown bench suite 'nope'; known: tasks"):
        run_bench(Settings(state_dir=tmp_path), ["tasks", "nope"])
    assert "tasks" in SUITES
