"""The system actors' Ray shells and how a driver finds or starts them.

The supervisor is a detached, named actor in the `dafnck` namespace with
`max_restarts=-1`: Ray restarts it when it dies, and its core rebuilds the pools from
the registry. Calls in flight during a restart are retried by Ray (`max_task_retries`),
which is safe because every supervisor operation is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors.launcher import RayLauncher
from actors.models import AgentRecord, AgentSpec, AgentStatus, Task, TaskResult
from actors.registry import AgentRegistry
from actors.router import PoolView
from actors.supervisor import Supervisor
from cluster.errors import ClusterUnavailable
from cluster.settings import RAY_NAMESPACE, Settings
from cluster.store import connect_store

log = logging.getLogger(__name__)


def supervisor_name(tenant: str) -> str:
    return f"supervisor-{tenant}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SupervisorActor:
    """Ray shell of `Supervisor`: builds it, restores pools, runs the reconcile loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._core = Supervisor(AgentRegistry(connect_store(settings)), RayLauncher())
        self._ready = asyncio.Event()
        self._loop = asyncio.get_event_loop().create_task(self._run())

    async def _run(self) -> None:
        await self._core.restore()
        self._ready.set()
        while True:
            await asyncio.sleep(self._settings.reconcile_interval_s)
            try:
                await self._core.reconcile()
            except Exception:  # the loop must outlive a store outage
                log.exception("reconcile failed; trying again")

    async def ready(self) -> bool:
        await self._ready.wait()
        return True

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
        report = self._core.monitor_health()
        report["ray"] = {
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "resources": ray.cluster_resources(),
            "available": ray.available_resources(),
        }
        return report

    def __repr__(self) -> str:
        return f"SupervisorActor(tenant={self._settings.tenant})"


def ensure_supervisor(settings: Settings, redis_url: str) -> Any:
    """The tenant's supervisor, started if it is not running; waits until it is ready.

    Raises:
        ClusterUnavailable: it did not become ready (its error is in the message).
    """
    handle = SupervisorActor.options(  # type: ignore[attr-defined]
        name=supervisor_name(settings.tenant),
        namespace=RAY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(settings.model_copy(update={"redis_url": redis_url}))
    try:
        ray.get(handle.ready.remote(), timeout=120)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
        raise ClusterUnavailable(f"the supervisor did not start: {exc}") from None
    return handle


def find_supervisor(tenant: str) -> Any | None:
    try:
        return ray.get_actor(supervisor_name(tenant), namespace=RAY_NAMESPACE)
    except ValueError:
        return None
