"""`dafnck executions logs ID` and the component table of `dafnck status`.

An execution's lines are the JSON lines (Ray's `LoggingConfig` encoding) whose
`execution_id` field names it, from every replica's log file: read from this machine's Ray
session directory, and through Ray's state API (`ray.util.state`) from other nodes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)

#: Log files where our processes write JSON lines (workers' stderr/stdout, Serve's logs).
LOG_PATTERNS = ("worker-*.err", "worker-*.out", "serve/*.log")
_STATUS_STYLE = {"ok": "green", "degraded": "yellow", "unavailable": "red"}


def matching_lines(
    lines: Iterable[str], execution_id: str, source: str
) -> Iterator[dict[str, Any]]:
    """The JSON records among `lines` whose `execution_id` is the one asked for."""
    for line in lines:
        if execution_id not in line:
            continue
        start = line.find("{")
        try:
            record = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("execution_id") == execution_id:
            record.setdefault("source", source)
            yield record


def local_log_dirs() -> list[Path]:
    """The logs directory of the Ray session this process joined (when it is on this node)."""
    import ray

    if not ray.is_initialized():
        return []
    node = getattr(ray._private.worker.global_worker, "node", None)
    logs = getattr(node, "get_logs_dir_path", None)
    path = Path(logs()) if logs else None
    return [path] if path and path.is_dir() else []


def read_local(execution_id: str, log_dirs: list[Path]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for directory in log_dirs:
        for pattern in LOG_PATTERNS:
            for path in sorted(directory.glob(pattern)):
                with path.open(errors="replace") as lines:
                    records += matching_lines(lines, execution_id, path.name)
    return records


def read_remote(execution_id: str, skip_node: str | None) -> list[dict[str, Any]]:
    """Through the state API, from every other alive node (needs the dashboard)."""
    import ray
    from ray.util.state import get_log, list_logs

    records: list[dict[str, Any]] = []
    for node in ray.nodes():
        node_id = node["NodeID"]
        if not node.get("Alive") or node_id == skip_node:
            continue
        try:
            files = list_logs(node_id=node_id)
        except Exception as exc:  # no dashboard: say so once and use what is local
            log.warning("cannot list logs of node %s: %s", node_id[:8], exc)
            continue
        names = [f for group in ("worker_err", "worker_out", "serve") for f in files.get(group, [])]
        for name in names:
            lines = get_log(filename=name, node_id=node_id, tail=-1)
            records += matching_lines(lines, execution_id, f"{node_id[:8]}:{name}")
    return records


def execution_logs(execution_id: str, log_dirs: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every JSON log record of the execution across the cluster, oldest first."""
    import ray

    dirs = local_log_dirs() if log_dirs is None else log_dirs
    records = read_local(execution_id, dirs)
    if log_dirs is None and ray.is_initialized():
        if not dirs:  # a Ray Client driver: every node is remote
            records += read_remote(execution_id, None)
        elif len(ray.nodes()) > 1:
            records += read_remote(execution_id, ray.get_runtime_context().get_node_id())
    return sorted(records, key=lambda r: int(r.get("timestamp_ns") or 0))


def print_records(console: Console, records: list[dict[str, Any]]) -> None:
    for r in records:
        who = r.get("agent") or r.get("actor_name") or r.get("source")
        where = " ".join(str(v) for v in (who, r.get("step_id")) if v)
        console.print(
            f"{r.get('asctime', '')} {r.get('levelname', ''):7} [{where}] "
            f"{r.get('message', '')}",
            markup=False, highlight=False,
        )  # fmt: skip


def register(exec_app: typer.Typer, connect: Callable[[], Any], console: Console) -> None:
    """Add `executions logs` to the CLI (`connect` joins the cluster)."""

    @exec_app.command("logs")
    def executions_logs(
        execution_id: str,
        as_json: Annotated[bool, typer.Option("--json", help="Print the JSON lines.")] = False,
    ) -> None:
        """One execution's log lines from every replica (JSON lines carrying its id)."""
        connect()
        records = execution_logs(execution_id)
        if as_json:
            for record in records:
                print(json.dumps(record, default=str))
            return
        if not records:
            console.print(f"no log lines carry execution {execution_id}")
        print_records(console, records)


def components_table(health: dict[str, Any]) -> Table:
    """`dafnck status`'s table of components and their statuses."""
    table = Table("component", "status", "detail")
    parts = health.get("components", {})
    for name, part in parts.items():
        if name == "pools":
            continue
        detail = ", ".join(f"{k} {v}" for k, v in part.items()
                           if k in ("latency_ms", "agents", "nodes", "dead_nodes", "pid", "error", "url"))  # fmt: skip
        table.add_row(name, _styled(part["status"]), detail)
    for agent_id, pool in parts.get("pools", {}).items():
        detail = f"{pool['running']}/{pool['desired']} replicas, load {pool['load']}, restarts {pool['restarts']}"
        table.add_row(f"pool {agent_id}", _styled(pool["status"]), detail)
    return table


def _styled(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


__all__ = ["components_table", "execution_logs", "matching_lines", "register"]
