"""Replica and pool health as typed models: the supervisor makes them, the health view, the
CLI and the dashboard read them, and their JSON keeps the shapes readers rely on (`{}` before
the first probe, only a replica that answered has a `pid`)."""

from __future__ import annotations

import pickle
import re

import pytest

from actors.health import PoolHealth, ReplicaHealth, pool_status, pools_of
from actors.registry import AgentRegistry
from actors.supervisor import Supervisor
from cluster.store import Store
from serve.api_dashboard import STATIC_DIR
from tests.unit.actors.fakes import FakeLauncher
from tests.unit.actors.test_supervisor import echo, run

LIVE = ReplicaHealth(replica="t/echo@1.0.0/1", agent="echo@1.0.0", pid=42, in_flight=2,
                     queued=1, completed=7, failed=1, busy_s=0.5, uptime_s=12.0)  # fmt: skip


@pytest.mark.parametrize(
    ("report", "json"),
    [
        (ReplicaHealth(), {}),
        (ReplicaHealth(pending=True), {"pending": True}),
        (ReplicaHealth(unresponsive=True), {"unresponsive": True}),
        (ReplicaHealth(replica="r", error="bad spec"), {"replica": "r", "error": "bad spec"}),
        (LIVE, {"replica": "t/echo@1.0.0/1", "agent": "echo@1.0.0", "pid": 42, "in_flight": 2,
                "queued": 1, "completed": 7, "failed": 1, "busy_s": 0.5, "uptime_s": 12.0}),
    ],
)  # fmt: skip
def test_a_replica_report_keeps_only_what_was_reported(
    report: ReplicaHealth, json: dict[str, object]
) -> None:
    assert report.model_dump() == json
    assert ReplicaHealth.model_validate_json(report.model_dump_json()) == report
    assert pickle.loads(pickle.dumps(report)) == report  # it crosses Ray from the replica
    assert ReplicaHealth.model_validate(json) == report  # a dict from an older replica reads


def test_a_pool_round_trips_and_its_load_counts_queued_tasks() -> None:
    pool = PoolHealth(status="active", desired=2, running=2,
                      replicas={"a": LIVE, "b": ReplicaHealth(pending=True)})  # fmt: skip
    assert PoolHealth.model_validate_json(pool.model_dump_json()) == pool
    assert pool.model_dump()["replicas"]["b"] == {"pending": True}
    assert LIVE.load == 3 and ReplicaHealth().load == 0
    assert pool_status(pool) == "ok"


def test_the_supervisor_reports_typed_pools(store: Store) -> None:
    supervisor = Supervisor(AgentRegistry(store), FakeLauncher())
    run(supervisor.create_agent(echo(low=2)))
    (name, _) = sorted(supervisor.pools["echo@1.0.0"].replicas.items())[0]
    before = pools_of(supervisor.monitor_health())["echo@1.0.0"]
    run(supervisor.reconcile())
    after = pools_of(supervisor.monitor_health())["echo@1.0.0"]
    assert (after.status, after.desired, after.running) == ("active", 2, 2)
    assert after.replicas[name].replica == name and after.replicas[name].in_flight == 0
    assert before.model_dump()["replicas"][name] in ({}, after.model_dump()["replicas"][name])


def _fields_read(source: str, function: str, variable: str) -> set[str]:
    body = source.split(f"function {function}(", 1)[1].split("\n}\n", 1)[0]
    return set(re.findall(rf"\b{variable}\??\.([a-z_]+)", body))


def test_the_dashboard_reads_the_models_field_names() -> None:
    source = (STATIC_DIR / "pages_cluster.js").read_text()
    replica = _fields_read(source, "replicasDetails", "r")
    pool = _fields_read(source, "poolsCard", "p") | _fields_read(source, "agentsPage", "pool")
    assert {"pid", "in_flight", "unresponsive", "uptime_s"} <= replica  # the parse finds them
    assert {"running", "desired", "in_flight"} <= pool
    assert replica <= set(ReplicaHealth.model_fields)
    assert pool - {"replicas"} <= set(PoolHealth.model_fields)
