"""`dafnck bench --suite scale` in its quick mode: throughput at one and two replicas of a
pool of 20 ms I/O tasks, and an autoscaled pool growing under a burst."""

from __future__ import annotations

import pytest

from cluster.bench.core import run_bench
from cluster.settings import Settings


@pytest.mark.timeout(120)
def test_scale_suite_reports_throughput_per_pool_size_and_the_burst_scale_up(
    tenant_settings: Settings,
) -> None:
    report = run_bench(tenant_settings, ["scale"], quick=True)

    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"pool_throughput_1", "pool_throughput_2", "burst_scale_up_s"}
    one, two = rows["pool_throughput_1"], rows["pool_throughput_2"]
    assert all(r["suite"] == "scale" for r in rows.values())
    assert one["unit"] == "tasks/s" and one["ratio"] == 1.0
    assert two["baseline"] == one["value"]
    assert two["ratio"] == pytest.approx(two["value"] / one["value"], rel=1e-3)
    assert rows["burst_scale_up_s"]["value"] > 0 and rows["burst_scale_up_s"]["unit"] == "s"
