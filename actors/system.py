"""The system actors' Ray shells and how a driver finds or starts them.

The supervisor is a detached, named actor in the `dafnck` namespace with
`max_restarts=-1`: Ray restarts it when it dies, and its core rebuilds the pools from
the registry. Calls in flight during a restart are retried by Ray (`max_task_retries`),
which is safe because every supervisor operation is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ray

from actors.contract import (
    AgentRef,
    CancelExecution,
    CoordinateAgents,
    CreateAgent,
    DecideStep,
    DefineWorkflow,
    ExecuteTask,
    ExecuteWorkflow,
    ExecutionRef,
    GetPool,
    ListExecutions,
    MonitorHealth,
    Request,
    ScaleAgent,
    SetAgentStatus,
    SignalExecution,
    StepAction,
    WaitExecution,
    WorkflowDefined,
)
from actors.events import EventBus
from actors.health import components, overall
from actors.hub import CommunicationHub
from actors.launcher import RayLauncher
from actors.models import AgentRecord, TaskResult
from actors.names import supervisor_name
from actors.observe import PoolGauges, TracedDispatcher, WorkflowObserver
from actors.registry import AgentRegistry
from actors.router import PoolView
from actors.supervisor import Supervisor
from actors.triggers import TriggerRunner
from actors.webhooks import WebhookDispatcher
from actors.workflow_service import AgentDispatcher, WorkflowService
from cluster import telemetry, tracing
from cluster.allowlist import CodePolicy
from cluster.errors import ClusterUnavailable, ConfigError
from cluster.redis_acl import tenant_url, without_credentials
from cluster.retention import Purger, run_sweeps
from cluster.settings import RAY_NAMESPACE, Settings
from cluster.store import connect_store
from cluster.valkey import running_url
from workflows.execution import Execution
from workflows.run import Run
from workflows.store import BlobStore, ExecutionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorParts:
    """One tenant's supervisor, built: the agent core, the workflows, and what runs beside."""

    settings: Settings
    core: Supervisor
    workflows: WorkflowService
    triggers: TriggerRunner
    webhooks: WebhookDispatcher
    purger: Purger
    pool_gauges: PoolGauges


def build_supervisor(settings: Settings) -> SupervisorParts:
    """Build every part of the tenant's supervisor in order, each handed what it needs."""
    store = connect_store(settings)
    registry = AgentRegistry(store)
    events = EventBus(store)
    policy = CodePolicy.from_settings(settings)  # what specs may run: checked on apply
    quotas = settings.quotas.for_tenant(settings.tenant)  # replicas, executions, ...
    core = Supervisor(registry, RayLauncher(settings), events, policy, quotas=quotas)
    runs: dict[str, Run] = {}  # the engine's executions in flight, which the observer names
    observer = WorkflowObserver(settings.tenant, events.mirror_execution_event, runs=runs)
    executions = ExecutionStore(store, BlobStore(settings.blobs), mirror=observer)
    dispatcher = TracedDispatcher(AgentDispatcher(core.router, registry), observer)
    workflows = WorkflowService(executions, registry, dispatcher, quotas=quotas, runs=runs)
    hub = CommunicationHub(store, registry)
    retention = settings.retention.for_tenant(settings.tenant)
    return SupervisorParts(
        settings=settings,
        core=core,
        workflows=workflows,
        triggers=TriggerRunner(workflows, hub, consumer=supervisor_name(settings.tenant)),
        webhooks=WebhookDispatcher(store, executions),  # execution-end webhooks
        purger=Purger(store, executions.blobs.dir, retention.usage_days),
        pool_gauges=PoolGauges(),
    )


Q = TypeVar("Q", bound=Request)
R = TypeVar("R")


def operation(
    method: Callable[[SupervisorActor, Q], Awaitable[R]],
) -> Callable[[SupervisorActor, Q], Awaitable[R]]:
    """A supervisor operation: it waits until the supervisor is ready, and its work joins the
    caller's trace (the request's `traceparent`, set by `actors.gateway`)."""

    @functools.wraps(method)
    async def run(self: SupervisorActor, request: Q) -> R:
        await self._ready.wait()
        with tracing.remote_parent(request.traceparent):
            return await method(self, request)

    return run


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SupervisorActor:
    """Ray shell of `Supervisor` (implements `actors.contract.SupervisorApi`): builds the
    parts, restores pools and executions, runs the reconcile loop and the sweeps."""

    def __init__(self, settings: Settings) -> None:
        telemetry.setup_process(settings, "supervisor")
        parts = self._parts = build_supervisor(settings)
        self._core, self._workflows = parts.core, parts.workflows
        engine = self._engine = parts.workflows.engine
        self._ready = asyncio.Event()
        loop = asyncio.get_event_loop()
        retention = settings.retention.for_tenant(settings.tenant)  # deletes what is past it
        self._background = [
            loop.create_task(parts.webhooks.run()),
            loop.create_task(run_sweeps(parts.purger, retention, lambda: set(engine.runs))),
            loop.create_task(self._run()),
        ]

    async def _run(self) -> None:
        await self._core.restore()
        recovered = await self._engine.recover()
        if recovered:
            log.info("resumed %d executions", len(recovered))
        self._ready.set()
        interval = self._parts.settings.reconcile_interval_s
        while True:
            with contextlib.suppress(TimeoutError):  # a caller waiting on an idle pool wakes it
                await asyncio.wait_for(self._core.wake.wait(), interval)
            try:
                await self._core.reconcile()
                self._parts.pool_gauges.record(self._core.pools)
                await self._parts.triggers.tick()
            except Exception:  # the loop must outlive a store outage
                log.exception("reconcile failed; trying again")

    async def ready(self) -> bool:
        await self._ready.wait()
        return True

    async def store_url(self) -> dict[str, str]:
        """Where this supervisor keeps state, for drivers that join the cluster: the URL
        without its credentials (any Ray caller may ask) and the state directory whose
        embedded Valkey password file a driver on this machine may read."""
        settings = self._parts.settings
        url = settings.redis_url or ""
        return {"url": without_credentials(url) if url else "",
                "state_dir": str(settings.state_dir)}  # fmt: skip

    # -- agents ---------------------------------------------------------------------------

    @operation
    async def create_agent(self, request: CreateAgent) -> AgentRecord:
        return await self._core.create_agent(request.spec)

    @operation
    async def remove_agent(self, request: AgentRef) -> None:
        await self._core.remove_agent(request.agent_id)

    @operation
    async def scale_agents(self, request: ScaleAgent) -> AgentRecord:
        return await self._core.scale_agents(request.agent_id, request.replicas)

    @operation
    async def update_agent_status(self, request: SetAgentStatus) -> AgentRecord:
        return await self._core.update_agent_status(request.agent_id, request.status)

    @operation
    async def get_pool(self, request: GetPool) -> PoolView:
        return self._core.get_pool(request.capability, request.agent)

    @operation
    async def execute_task(self, request: ExecuteTask) -> TaskResult:
        return await self._core.execute_task(request.task)

    @operation
    async def monitor_health(self, request: MonitorHealth) -> dict[str, Any]:
        report = await asyncio.to_thread(self._core.monitor_health)  # a dead store takes seconds
        context = ray.get_runtime_context()
        report["system"] = {
            supervisor_name(self._parts.settings.tenant): {
                "pid": os.getpid(),
                "node": context.get_node_id(),
                "restarted": context.was_current_actor_reconstructed,
                "executions_running": len(self._engine.runs),
            }
        }
        nodes = ray.nodes()
        report["ray"] = {
            "nodes": sum(1 for n in nodes if n.get("Alive")),
            "resources": ray.cluster_resources(),
            "available": ray.available_resources(),
            "dead_nodes": sum(1 for n in nodes if not n.get("Alive")),
        }
        report["components"] = components(report, self._core.registry)
        report["status"] = overall(report["components"])
        return report

    # -- workflows (the seed's WorkflowManager, in Python naming) -------------------------

    @operation
    async def define_workflow(self, request: DefineWorkflow) -> WorkflowDefined:
        return WorkflowDefined(**self._workflows.define_workflow(request.spec))

    @operation
    async def execute_workflow(self, request: ExecuteWorkflow) -> Execution:
        return await self._workflows.execute_workflow(
            request.workflow, request.inputs, version=request.version,
            execution_id=request.execution_id,
        )  # fmt: skip

    @operation
    async def coordinate_agents(self, request: CoordinateAgents) -> Execution:
        return await self._workflows.coordinate_agents(
            request.spec, request.inputs, request.timeout_s
        )

    @operation
    async def get_execution_status(self, request: ExecutionRef) -> Execution:
        return self._workflows.get_execution_status(request.execution_id)

    @operation
    async def wait_execution(self, request: WaitExecution) -> Execution:
        with contextlib.suppress(TimeoutError):  # past it: the execution as it is now
            return await self._engine.wait(request.execution_id, request.timeout_s)
        return self._workflows.get_execution_status(request.execution_id)

    @operation
    async def list_executions(self, request: ListExecutions) -> list[Execution]:
        return self._workflows.list_executions(request.limit, request.status)

    @operation
    async def pause_workflow(self, request: ExecutionRef) -> Execution:
        return await self._engine.pause(request.execution_id)

    @operation
    async def resume_workflow(self, request: ExecutionRef) -> Execution:
        return await self._engine.resume(request.execution_id)

    @operation
    async def retry_workflow(self, request: ExecutionRef) -> Execution:
        return await self._engine.retry(request.execution_id)

    @operation
    async def cancel_workflow(self, request: CancelExecution) -> Execution:
        return await self._engine.cancel(request.execution_id, request.by, request.reason)

    @operation
    async def decide_step(self, request: DecideStep) -> Execution:
        """Approve or reject a step waiting at its approval gate."""
        return await self._engine.decide(
            request.execution_id, request.step, request.approved, request.by, request.reason
        )

    @operation
    async def signal_execution(self, request: SignalExecution) -> Execution:
        return await self._engine.signal(request.execution_id, request.name, request.payload)

    @operation
    async def cancel_step(self, request: StepAction) -> Execution:
        return await self._engine.cancel_step(
            request.execution_id, request.step, request.by, request.reason
        )

    @operation
    async def skip_step(self, request: StepAction) -> Execution:
        return await self._engine.skip_step(
            request.execution_id, request.step, request.by, request.reason
        )

    def __repr__(self) -> str:
        return f"SupervisorActor(tenant={self._parts.settings.tenant})"


def ensure_supervisor(settings: Settings, redis_url: str) -> Any:
    """The tenant's supervisor, started if it is not running; waits until it is ready.

    `redis_url` is the platform's (admin) URL: the tenant's ACL user is made or updated
    through it first, and the supervisor (and so its replicas) gets the tenant's URL, as a
    constructor argument (Ray's dashboard shows runtime_env variables, not arguments).

    Raises:
        ClusterUnavailable: it did not become ready (its error is in the message).
        ConfigError: the tenant's ACL user cannot be made (see `cluster.redis_acl`).
    """
    tenant_store = _tenant_store_url(settings, redis_url)
    if tenant_store is None:  # no right to make users here, but the supervisor runs already
        handle = find_supervisor(settings.tenant)
        assert handle is not None
    else:
        handle = SupervisorActor.options(  # type: ignore[attr-defined]
            name=supervisor_name(settings.tenant),
            namespace=RAY_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(settings.model_copy(update={"redis_url": tenant_store}))
    try:
        ray.get(handle.ready.remote(), timeout=120)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
        raise ClusterUnavailable(f"the supervisor did not start: {exc}") from None
    return handle


def _tenant_store_url(settings: Settings, redis_url: str) -> str | None:
    """The URL the tenant's supervisor uses: its ACL user's, or `redis_url` with
    `redis_tenant_acl` off. None when `redis_url` may not make users (a tenant's own URL)
    but the supervisor already runs.

    Raises:
        ConfigError, StoreUnavailable: see `cluster.redis_acl.tenant_url`.
    """
    if not settings.redis_tenant_acl:
        return redis_url
    try:
        return tenant_url(
            redis_url, settings.tenant, connect_timeout_s=settings.redis_connect_timeout_s
        )
    except ConfigError:
        if find_supervisor(settings.tenant) is not None:
            return None
        raise


def joined_store_url(tenant: str) -> str | None:
    """The running supervisor's store, so a driver joining a cluster (a Ray job's) keeps
    state in the same store instead of starting an embedded one of its own: the embedded
    Valkey's admin URL when this machine holds its state directory, else the bare URL
    (a Redis that asks for a password needs `DAFNCK_REDIS_URL` in the job's env)."""
    handle = find_supervisor(tenant)
    if handle is None:
        return None
    try:
        where = ray.get(handle.store_url.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    url = str(where.get("url") or "")
    embedded = running_url(Path(where.get("state_dir") or "."))
    if embedded and without_credentials(embedded) == url:
        return embedded
    return url or None


def find_supervisor(tenant: str) -> Any | None:
    try:
        return ray.get_actor(supervisor_name(tenant), namespace=RAY_NAMESPACE)
    except ValueError:
        return None
