"""The Python client for notebooks, scripts and the CLI: `connect()` and go.

```python
from actors import connect
dm = connect()
dm.agents.apply("configs/agents/")
dm.tasks.run("code.analyse", {"path": "actors/router.py"})
```
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayTaskError

from actors.hub import CommunicationHub
from actors.models import (
    AgentRecord,
    AgentSpec,
    AgentStatus,
    DiscoveryCriteria,
    Task,
    TaskResult,
    new_id,
)
from actors.registry import AgentRegistry
from actors.router import Call, PoolRouter, PoolView
from actors.system import ensure_supervisor
from cluster.data import DataManager
from cluster.errors import DafnckError, SpecInvalid
from cluster.ray_runtime import Missing, init_ray
from cluster.settings import Settings, load_settings
from cluster.store import Store, connect_store, resolve_redis_url
from cluster.tracing import current_traceparent
from cluster.yamlfile import parse_models
from workflows.execution import Event, Execution, ExecutionStatus
from workflows.loader import load_workflow_specs
from workflows.spec import WorkflowSpec
from workflows.store import BlobStore, ExecutionStore


def call(ref: Any, timeout_s: float | None = 300) -> Any:
    """`ray.get` that raises our own error, not Ray's wrapper with a remote traceback."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except RayTaskError as exc:
        if isinstance(exc.cause, DafnckError):
            raise exc.cause from None
        raise


class Agents:
    """Agents of one tenant: apply specs, list, discover, scale, remove."""

    def __init__(self, supervisor: Any, registry: AgentRegistry) -> None:
        self._supervisor = supervisor
        self._registry = registry

    def apply(self, source: AgentSpec | str | Path | Iterable[AgentSpec]) -> list[AgentRecord]:
        """Create or update agents from a spec, specs, or a YAML file or directory.

        Every spec is validated before any is applied, so a bad file changes nothing.

        Raises:
            SpecInvalid: naming each file, line and field at fault.
        """
        specs = (
            load_agent_specs(Path(source))
            if isinstance(source, str | Path)
            else ([source] if isinstance(source, AgentSpec) else list(source))
        )
        refs = [self._supervisor.create_agent.remote(spec) for spec in specs]
        return [call(ref) for ref in refs]

    def ls(self, criteria: DiscoveryCriteria | None = None) -> list[AgentRecord]:
        return self._registry.discover_agents(criteria)

    def discover(self, **criteria: Any) -> list[AgentRecord]:
        return self._registry.discover_agents(DiscoveryCriteria(**criteria))

    def get(self, agent_id: str) -> AgentRecord:
        return self._registry.get(agent_id)

    def scale(self, name: str, replicas: int) -> list[AgentRecord]:
        """Scale every version matching `name` (or `name@range`)."""
        ids = [r.agent_id for r in self._registry.resolve(name)]
        return [call(self._supervisor.scale_agents.remote(i, replicas)) for i in ids]

    def set_status(self, name: str, status: AgentStatus) -> list[AgentRecord]:
        ids = [r.agent_id for r in self._registry.resolve(name)]
        return [call(self._supervisor.update_agent_status.remote(i, status)) for i in ids]

    def rm(self, name: str) -> list[str]:
        """Remove every version matching `name` (or `name@range`)."""
        ids = [r.agent_id for r in self._registry.resolve(name)]
        for agent_id in ids:
            call(self._supervisor.remove_agent.remote(agent_id))
        return ids


class Tasks:
    """Run tasks: routed from this process straight to a replica."""

    def __init__(self, router: PoolRouter, tenant: str) -> None:
        self.router = router
        self._tenant = tenant

    def task(self, capability: str, input: dict[str, Any] | None = None, **fields: Any) -> Task:
        context = fields.pop("context", {"tenant": self._tenant})
        return Task(capability=capability, input=input or {}, context=context, **fields)

    def submit(self, capability: str, input: dict[str, Any] | None = None, **fields: Any) -> Call:
        return self.router.submit(self.task(capability, input, **fields))

    def result(self, pending: Call) -> TaskResult:
        return self.router.result(pending)

    def run(
        self, capability: str, input: dict[str, Any] | None = None, **fields: Any
    ) -> TaskResult:
        """Run one task and wait for its result (a failed result is returned, not raised).

        Raises:
            AgentNotFound, InputInvalid, QueueFull.
        """
        return self.router.run(self.task(capability, input, **fields))


class Workflows:
    """Define and run workflows; control and watch their executions."""

    def __init__(self, supervisor: Any, executions: ExecutionStore) -> None:
        self._supervisor = supervisor
        self.executions = executions

    def define(self, source: WorkflowSpec | str | Path) -> list[dict[str, Any]]:
        """Define workflows from a spec or a YAML file/directory; returns name and version.

        Raises:
            SpecInvalid: every problem, with file:line for YAML.
        """
        specs = (
            [source]
            if isinstance(source, WorkflowSpec)
            else [s for s, _ in load_workflow_specs(source)]
        )
        return [call(self._supervisor.define_workflow.remote(spec)) for spec in specs]

    def run(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        wait: bool = True,
        timeout_s: float | None = None,
        execution_id: str | None = None,
    ) -> Execution:
        """Start an execution (and wait for it to end unless `wait=False`).

        Raises:
            NotFound, InputInvalid.
        """
        execution_id = execution_id or new_id()  # a retried call after a restart starts it once
        execution = call(
            self._supervisor.execute_workflow.remote(
                name, inputs, version, execution_id, current_traceparent()
            )
        )
        return self.wait(execution.id, timeout_s) if wait else execution

    def wait(self, execution_id: str, timeout_s: float | None = None) -> Execution:
        return call(self._supervisor.wait_execution.remote(execution_id, timeout_s), None)  # type: ignore[no-any-return]

    def status(self, execution_id: str) -> Execution:
        return call(self._supervisor.get_execution_status.remote(execution_id))  # type: ignore[no-any-return]

    def ls(self, limit: int = 50, status: ExecutionStatus | None = None) -> list[Execution]:
        return self.executions.list_executions(limit, status)

    def pause(self, execution_id: str) -> Execution:
        return call(self._supervisor.pause_workflow.remote(execution_id))  # type: ignore[no-any-return]

    def resume(self, execution_id: str) -> Execution:
        return call(self._supervisor.resume_workflow.remote(execution_id))  # type: ignore[no-any-return]

    def cancel(self, execution_id: str, by: str = "cli", reason: str = "") -> Execution:
        return call(self._supervisor.cancel_workflow.remote(execution_id, by, reason))  # type: ignore[no-any-return]

    def approve(self, execution_id: str, step: str, by: str, reason: str = "") -> Execution:
        return call(self._supervisor.decide_step.remote(execution_id, step, True, by, reason))  # type: ignore[no-any-return]

    def reject(self, execution_id: str, step: str, by: str, reason: str = "") -> Execution:
        return call(self._supervisor.decide_step.remote(execution_id, step, False, by, reason))  # type: ignore[no-any-return]

    def retry(self, execution_id: str) -> Execution:
        return call(self._supervisor.retry_workflow.remote(execution_id))  # type: ignore[no-any-return]

    def events(
        self, execution_id: str, after: str = "0-0", block_ms: int | None = None
    ) -> list[tuple[str, Event]]:
        """Events after the stream id `after`; with `block_ms`, wait that long for new ones."""
        return self.executions.events(execution_id, after, block_ms=block_ms)


class Client:
    """One tenant's handle on a running DafnckMachine."""

    def __init__(
        self, settings: Settings, store: Store, supervisor: Any, dashboard_url: str = ""
    ) -> None:
        self.settings = settings
        self.store = store
        self.supervisor = supervisor
        self.dashboard_url = dashboard_url
        self.registry = AgentRegistry(store)
        self.agents = Agents(supervisor, self.registry)
        self.tasks = Tasks(PoolRouter(self._pool), settings.tenant)
        self.workflows = Workflows(supervisor, ExecutionStore(store, BlobStore(settings.blobs)))
        #: Messages (async API): send, broadcast, publish, channels, history.
        quotas = settings.quotas.for_tenant(settings.tenant)  # topics
        self.hub = CommunicationHub(store, self.registry, quotas=quotas)
        #: Data objects and backups of this tenant's state.
        self.data = DataManager.from_settings(store, settings)

    def _pool(self, capability: str, agent: str | None) -> PoolView:
        return call(self.supervisor.get_pool.remote(capability, agent))  # type: ignore[no-any-return]

    def health(self) -> dict[str, Any]:
        return call(self.supervisor.monitor_health.remote())  # type: ignore[no-any-return]


def connect(
    address: str | None = None, settings: Settings | None = None, *, missing: Missing = "start_head"
) -> Client:
    """Connect to DafnckMachine: Ray, the store and the tenant's supervisor.

    With no cluster running, `missing` says what to do: start this machine's head
    (`start_head`, the default, as `dafnck up` does), start a Ray private to this process
    (`local`), or raise (`fail`).

    Raises:
        ClusterUnavailable, StoreUnavailable, ConfigError.
    """
    settings = settings or load_settings()
    dashboard = init_ray(settings, address, missing=missing)
    url = resolve_redis_url(settings)
    store = connect_store(settings, url=url)
    return Client(settings, store, ensure_supervisor(settings, url), dashboard)


def load_agent_specs(path: Path) -> list[AgentSpec]:
    """Every agent spec in a YAML file or directory. Raises: SpecInvalid (file:line: field)."""
    parsed = parse_models(path, AgentSpec)
    seen: dict[str, str] = {}
    problems = []
    for spec, doc in parsed:
        if spec.agent_id in seen:
            problems.append(
                f"{doc.where()}: {spec.agent_id!r} is also defined at {seen[spec.agent_id]}"
            )
        seen[spec.agent_id] = doc.where()
    if problems:
        raise SpecInvalid(str(path), problems)
    return [spec for spec, _ in parsed]
