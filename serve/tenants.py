"""One tenant's parts as the API's routes use them, built once per tenant per replica.

A route never holds the notebook client (`actors.client.Client`), whose calls block: it
gets the tenant's `SupervisorApi` (the async gateway, every operation by name with its
request model from `actors.contract`), its `PoolRouter` (awaited with `run_async`), and the
store-backed parts (registry, execution store, hub, data). Starting the supervisor is the
one blocking step, done once per tenant in a worker thread (`serve.deps.Services`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from actors.contract import GetPool, SupervisorApi
from actors.gateway import SupervisorGateway, blocking
from actors.hub import CommunicationHub
from actors.registry import AgentRegistry
from actors.router import PoolRouter, PoolView
from actors.system import ensure_supervisor
from cluster.data.objects import DataManager
from cluster.settings import Settings
from cluster.store import Store
from workflows.store import BlobStore, ExecutionStore

#: Starts (or finds) a tenant's supervisor and returns its operations; may block (Ray).
SupervisorSource = Callable[[Settings], SupervisorApi]


def ray_supervisor(settings: Settings) -> SupervisorApi:
    """The tenant's supervisor on Ray, started if it does not run yet (blocking)."""
    return SupervisorGateway(ensure_supervisor(settings, settings.redis_url or ""))


@dataclass(frozen=True)
class TenantServices:
    """What the routes need of one tenant; the tenant itself comes from the credential."""

    settings: Settings
    store: Store
    #: Every supervisor operation, awaited: `await gateway.pause_workflow(ExecutionRef(...))`.
    gateway: SupervisorApi
    registry: AgentRegistry
    #: Tasks go straight to a pool's replicas: `await router.run_async(task)`.
    router: PoolRouter
    executions: ExecutionStore
    hub: CommunicationHub
    data: DataManager

    @classmethod
    def build(cls, settings: Settings, store: Store, gateway: SupervisorApi) -> TenantServices:
        """The parts over `store` (the tenant's view) and `gateway`; nothing blocks."""
        registry = AgentRegistry(store)
        quotas = settings.quotas.for_tenant(settings.tenant)

        def pool(capability: str, agent: str | None) -> PoolView:
            # The router asks this in a worker thread, once per pool view (ttl 2 s).
            return blocking(gateway.get_pool(GetPool(capability=capability, agent=agent)))

        return cls(
            settings=settings,
            store=store,
            gateway=gateway,
            registry=registry,
            router=PoolRouter(pool),
            executions=ExecutionStore(store, BlobStore(settings.blobs)),
            hub=CommunicationHub(store, registry, quotas=quotas),
            data=DataManager.from_settings(store, settings),
        )


__all__ = ["SupervisorSource", "TenantServices", "ray_supervisor"]
