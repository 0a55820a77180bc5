"""The system actors' Ray shells and how a driver finds or starts them.

The supervisor is a detached, named actor in the `dafnck` namespace with
`max_restarts=-1`: Ray restarts it when it dies, and its core rebuilds the pools from
the registry. Calls in flight during a restart are retried by Ray (`max_task_retries`),
which is safe because every supervisor operation is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import ray

from actors.events import EventBus
from actors.health import components, overall
from actors.hub import CommunicationHub
from actors.launcher import RayLauncher
from actors.models import AgentRecord, AgentSpec, AgentStatus, Task, TaskResult
from actors.observe import PoolGauges, TracedDispatcher, WorkflowObserver
from actors.registry import AgentRegistry
from actors.router import PoolView
from actors.supervisor import Supervisor
from actors.triggers import TriggerRunner
from actors.webhooks import WebhookDispatcher
from actors.workflow_service import WorkflowService
from cluster import telemetry, tracing
from cluster.allowlist import CodePolicy
from cluster.errors import ClusterUnavailable, ConfigError
from cluster.redis_acl import tenant_url, without_credentials
from cluster.retention import Purger, run_sweeps
from cluster.settings import RAY_NAMESPACE, Settings
from cluster.store import connect_store
from cluster.valkey import running_url
from workflows.execution import Execution, ExecutionStatus
from workflows.spec import WorkflowSpec
from workflows.store import BlobStore, ExecutionStore

log = logging.getLogger(__name__)


def supervisor_name(tenant: str) -> str:
    return f"supervisor-{tenant}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SupervisorActor:
    """Ray shell of `Supervisor`: builds it, restores pools, runs the reconcile loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        telemetry.setup_process(settings, "supervisor")
        store = connect_store(settings)
        registry = AgentRegistry(store)
        events = EventBus(store)
        policy = CodePolicy.from_settings(settings)  # what specs may run: checked on apply
        quotas = settings.quotas.for_tenant(settings.tenant)  # replicas, executions, ...
        self._core = Supervisor(registry, RayLauncher(settings), events, policy, quotas=quotas)
        observer = WorkflowObserver(settings.tenant, events.mirror_execution_event)
        executions = ExecutionStore(store, BlobStore(settings.blobs), mirror=observer)
        self._workflows = WorkflowService(executions, registry, self._core.router)
        engine = observer.engine = self._workflows.engine
        engine.dispatcher = TracedDispatcher(engine.dispatcher, observer)
        engine.quotas = quotas
        self._pool_gauges = PoolGauges()
        hub = CommunicationHub(store, registry)
        self._triggers = TriggerRunner(
            self._workflows, hub, consumer=supervisor_name(settings.tenant)
        )
        self._webhooks = WebhookDispatcher(store, executions)  # execution-end webhooks
        self._webhook_loop = asyncio.get_event_loop().create_task(self._webhooks.run())
        retention = settings.retention.for_tenant(settings.tenant)  # deletes what is past it
        purger = Purger(store, executions.blobs.dir, retention.usage_days)
        self._sweeps = asyncio.get_event_loop().create_task(
            run_sweeps(purger, retention, lambda: set(self._workflows.engine.runs))
        )
        self._ready = asyncio.Event()
        self._loop = asyncio.get_event_loop().create_task(self._run())

    async def _run(self) -> None:
        await self._core.restore()
        recovered = await self._workflows.engine.recover()
        if recovered:
            log.info("resumed %d executions", len(recovered))
        self._ready.set()
        while True:
            with contextlib.suppress(TimeoutError):  # a caller waiting on an idle pool wakes it
                await asyncio.wait_for(self._core.wake.wait(), self._settings.reconcile_interval_s)
            try:
                await self._core.reconcile()
                self._pool_gauges.record(self._core.pools)
                await self._triggers.tick()
            except Exception:  # the loop must outlive a store outage
                log.exception("reconcile failed; trying again")

    async def ready(self) -> bool:
        await self._ready.wait()
        return True

    async def store_url(self) -> dict[str, str]:
        """Where this supervisor keeps state, for drivers that join the cluster: the URL
        without its credentials (any Ray caller may ask) and the state directory whose
        embedded Valkey password file a driver on this machine may read."""
        url = self._settings.redis_url or ""
        return {"url": without_credentials(url) if url else "",
                "state_dir": str(self._settings.state_dir)}  # fmt: skip

    async def create_agent(self, spec: AgentSpec) -> AgentRecord:
        await self._ready.wait()
        return await self._core.create_agent(spec)

    async def remove_agent(self, agent_id: str) -> None:
        await self._ready.wait()
        await self._core.remove_agent(agent_id)

    async def scale_agents(self, agent_id: str, replicas: int) -> AgentRecord:
        await self._ready.wait()
        return await self._core.scale_agents(agent_id, replicas)

    async def update_agent_status(self, agent_id: str, status: AgentStatus) -> AgentRecord:
        await self._ready.wait()
        return await self._core.update_agent_status(agent_id, status)

    async def get_pool(self, capability: str, agent: str | None = None) -> PoolView:
        await self._ready.wait()
        return self._core.get_pool(capability, agent)

    async def execute_task(self, task: Task) -> TaskResult:
        await self._ready.wait()
        return await self._core.execute_task(task)

    async def monitor_health(self) -> dict[str, Any]:
        await self._ready.wait()
        report = await asyncio.to_thread(self._core.monitor_health)  # a dead store takes seconds
        context = ray.get_runtime_context()
        report["system"] = {
            supervisor_name(self._settings.tenant): {
                "pid": os.getpid(),
                "node": context.get_node_id(),
                "restarted": context.was_current_actor_reconstructed,
                "executions_running": len(self._workflows.engine.runs),
            }
        }
        report["ray"] = {
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "resources": ray.cluster_resources(),
            "available": ray.available_resources(),
            "dead_nodes": sum(1 for n in ray.nodes() if not n.get("Alive")),
        }
        report["components"] = components(report, self._core.registry)
        report["status"] = overall(report["components"])
        return report

    # -- workflows (the seed's WorkflowManager, in Python naming) -------------------------

    async def define_workflow(self, spec: WorkflowSpec) -> dict[str, Any]:
        await self._ready.wait()
        return self._workflows.define_workflow(spec)

    async def execute_workflow(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        version: int | None = None,
        execution_id: str | None = None,
        traceparent: str | None = None,
    ) -> Execution:
        await self._ready.wait()
        with tracing.remote_parent(traceparent):  # the caller's span parents the execution's
            return await self._workflows.execute_workflow(
                name, inputs, version=version, execution_id=execution_id
            )

    async def coordinate_agents(
        self,
        spec: WorkflowSpec,
        inputs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Execution:
        await self._ready.wait()
        return await self._workflows.coordinate_agents(spec, inputs, timeout_s)

    async def get_execution_status(self, execution_id: str) -> Execution:
        await self._ready.wait()
        return self._workflows.get_execution_status(execution_id)

    async def wait_execution(self, execution_id: str, timeout_s: float | None = None) -> Execution:
        await self._ready.wait()
        return await self._workflows.engine.wait(execution_id, timeout_s)

    async def list_executions(
        self, limit: int = 50, status: ExecutionStatus | None = None
    ) -> list[Execution]:
        await self._ready.wait()
        return self._workflows.list_executions(limit, status)

    async def pause_workflow(self, execution_id: str) -> Execution:
        await self._ready.wait()
        return await self._workflows.engine.pause(execution_id)

    async def resume_workflow(self, execution_id: str) -> Execution:
        await self._ready.wait()
        return await self._workflows.engine.resume(execution_id)

    async def cancel_workflow(self, execution_id: str, by: str = "", reason: str = "") -> Execution:
        await self._ready.wait()
        return await self._workflows.engine.cancel(execution_id, by, reason)

    async def decide_step(
        self, execution_id: str, step_id: str, approved: bool, by: str, reason: str = ""
    ) -> Execution:
        """Approve or reject a step waiting at its approval gate."""
        await self._ready.wait()
        return await self._workflows.engine.decide(execution_id, step_id, approved, by, reason)

    async def retry_workflow(self, execution_id: str) -> Execution:
        await self._ready.wait()
        return await self._workflows.engine.retry(execution_id)

    def __repr__(self) -> str:
        return f"SupervisorActor(tenant={self._settings.tenant})"


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
