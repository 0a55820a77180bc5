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

from actors.contract import (
    AgentRef,
    CancelExecution,
    CreateAgent,
    DecideStep,
    DefineWorkflow,
    ExecuteWorkflow,
    ExecutionRef,
    GetPool,
    MonitorHealth,
    ScaleAgent,
    SetAgentStatus,
    SignalExecution,
    StepAction,
    WaitExecution,
)
from actors.gateway import BlockingSupervisor, SupervisorGateway
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
from cluster.data.objects import DataManager
from cluster.errors import SpecInvalid
from cluster.ray_runtime import Missing, init_ray
from cluster.settings import Settings, load_settings
from cluster.store import Store, connect_store, resolve_redis_url
from cluster.yamlfile import parse_models
from workflows.execution import Event, Execution, ExecutionStatus
from workflows.loader import load_workflow_specs
from workflows.spec import WorkflowSpec
from workflows.store import BlobStore, ExecutionStore


class Agents:
    """Agents of one tenant: apply specs, list, discover, scale, remove."""

    def __init__(self, supervisor: BlockingSupervisor, registry: AgentRegistry) -> None:
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
        return [self._supervisor.create_agent(CreateAgent(spec=spec)) for spec in specs]

    def ls(self, criteria: DiscoveryCriteria | None = None) -> list[AgentRecord]:
        return self._registry.discover_agents(criteria)

    def discover(self, **criteria: Any) -> list[AgentRecord]:
        return self._registry.discover_agents(DiscoveryCriteria(**criteria))

    def get(self, agent_id: str) -> AgentRecord:
        return self._registry.get(agent_id)

    def scale(self, name: str, replicas: int) -> list[AgentRecord]:
        """Scale every version matching `name` (or `name@range`)."""
        return [
            self._supervisor.scale_agents(ScaleAgent(agent_id=r.agent_id, replicas=replicas))
            for r in self._registry.resolve(name)
        ]

    def set_status(self, name: str, status: AgentStatus) -> list[AgentRecord]:
        return [
            self._supervisor.update_agent_status(SetAgentStatus(agent_id=r.agent_id, status=status))
            for r in self._registry.resolve(name)
        ]

    def rm(self, name: str) -> list[str]:
        """Remove every version matching `name` (or `name@range`)."""
        ids = [r.agent_id for r in self._registry.resolve(name)]
        for agent_id in ids:
            self._supervisor.remove_agent(AgentRef(agent_id=agent_id))
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

    def cancel(self, pending: Call) -> bool:
        """Stop the task on its replica (`ray.cancel`) and give back its slot; a reader of
        its result gets `TaskCancelled`. False when it had already ended."""
        return self.router.cancel(pending)

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

    def __init__(self, supervisor: BlockingSupervisor, executions: ExecutionStore) -> None:
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
        define = self._supervisor.define_workflow
        return [define(DefineWorkflow(spec=spec)).model_dump() for spec in specs]

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
        execution = self._supervisor.execute_workflow(
            ExecuteWorkflow(
                workflow=name, inputs=inputs or {}, version=version,
                # a retried call (after a supervisor restart) starts it once
                execution_id=execution_id or new_id(),
            )
        )  # fmt: skip
        return self.wait(execution.id, timeout_s) if wait else execution

    def wait(self, execution_id: str, timeout_s: float | None = None) -> Execution:
        request = WaitExecution(execution_id=execution_id, timeout_s=timeout_s)
        return self._supervisor.wait_execution(request)

    def status(self, execution_id: str) -> Execution:
        return self._supervisor.get_execution_status(ExecutionRef(execution_id=execution_id))

    def ls(self, limit: int = 50, status: ExecutionStatus | None = None) -> list[Execution]:
        return self.executions.list_executions(limit, status)

    def pause(self, execution_id: str) -> Execution:
        return self._supervisor.pause_workflow(ExecutionRef(execution_id=execution_id))

    def resume(self, execution_id: str) -> Execution:
        return self._supervisor.resume_workflow(ExecutionRef(execution_id=execution_id))

    def retry(self, execution_id: str) -> Execution:
        return self._supervisor.retry_workflow(ExecutionRef(execution_id=execution_id))

    def cancel(self, execution_id: str, by: str = "cli", reason: str = "") -> Execution:
        request = CancelExecution(execution_id=execution_id, by=by, reason=reason)
        return self._supervisor.cancel_workflow(request)

    def approve(self, execution_id: str, step: str, by: str, reason: str = "") -> Execution:
        return self.decide(execution_id, step, approved=True, by=by, reason=reason)

    def reject(self, execution_id: str, step: str, by: str, reason: str = "") -> Execution:
        return self.decide(execution_id, step, approved=False, by=by, reason=reason)

    def decide(
        self, execution_id: str, step: str, *, approved: bool, by: str, reason: str = ""
    ) -> Execution:
        """Approve or reject the step waiting at its approval gate."""
        return self._supervisor.decide_step(
            DecideStep(execution_id=execution_id, step=step, approved=approved, by=by,
                       reason=reason)
        )  # fmt: skip

    def signal(self, execution_id: str, name: str, payload: Any = None) -> Execution:
        """Send signal `name` (its payload becomes the output of the step waiting for it)."""
        request = SignalExecution(execution_id=execution_id, name=name, payload=payload)
        return self._supervisor.signal_execution(request)

    def cancel_step(
        self, execution_id: str, step: str, by: str = "cli", reason: str = ""
    ) -> Execution:
        """Cancel one step (its running work stops); the rest of the execution goes on."""
        request = StepAction(execution_id=execution_id, step=step, by=by, reason=reason)
        return self._supervisor.cancel_step(request)

    def skip_step(
        self, execution_id: str, step: str, by: str = "cli", reason: str = ""
    ) -> Execution:
        """Skip one step, as if its `when` were false."""
        request = StepAction(execution_id=execution_id, step=step, by=by, reason=reason)
        return self._supervisor.skip_step(request)

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
        #: The supervisor's actor handle; every call to it goes through `gateway`.
        self.supervisor = supervisor
        #: The supervisor's operations (`actors.contract`), async and blocking.
        self.gateway = SupervisorGateway(supervisor)
        self.api = BlockingSupervisor(self.gateway)
        self.dashboard_url = dashboard_url
        self.registry = AgentRegistry(store)
        self.agents = Agents(self.api, self.registry)
        self.tasks = Tasks(PoolRouter(self._pool), settings.tenant)
        self.workflows = Workflows(self.api, ExecutionStore(store, BlobStore(settings.blobs)))
        #: Messages (async API): send, broadcast, publish, channels, history.
        quotas = settings.quotas.for_tenant(settings.tenant)  # topics
        self.hub = CommunicationHub(store, self.registry, quotas=quotas)
        #: Data objects and backups of this tenant's state.
        self.data = DataManager.from_settings(store, settings)

    def _pool(self, capability: str, agent: str | None) -> PoolView:
        return self.api.get_pool(GetPool(capability=capability, agent=agent))

    def health(self) -> dict[str, Any]:
        return self.api.monitor_health(MonitorHealth())


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
