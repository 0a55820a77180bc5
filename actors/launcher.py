"""All Ray calls the supervisor makes to start, find, probe and stop agent replicas.

Replicas are named, detached actors in the `dafnck` namespace, so they outlive a
supervisor restart and the restarted supervisor adopts them by name.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.agent import AgentActor, ReplicaConfig
from actors.health import ReplicaHealth
from actors.models import AgentSpec, SkillInfo
from cluster.settings import RAY_NAMESPACE, Settings

#: A replica that does not answer a health probe in this time is reported unresponsive.
PROBE_TIMEOUT_S = 10.0
#: A replica silent this long is looked up in the GCS: still waiting for resources?
PENDING_CHECK_S = 1.0
_PENDING_STATES = {"PENDING_CREATION", "DEPENDENCIES_UNREADY"}
#: Calls a replica takes in at once (running or waiting for a slot); Ray queues the rest.
MAX_ACCEPTED = 10_000


class RayLauncher:
    """Starts `AgentActor` replicas with the spec's resources and concurrency."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    def start(self, spec: AgentSpec, name: str, slot: int = 0) -> Any:
        res = spec.resources
        return AgentActor.options(  # type: ignore[attr-defined]
            name=name,
            namespace=RAY_NAMESPACE,
            lifetime="detached",
            # Ray lets the queued ones in too: the replica holds them at its own semaphore,
            # so its probe reports them (what the pool autoscaler sizes the pool by).
            max_concurrency=min(spec.max_concurrency + spec.max_queued, MAX_ACCEPTED),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            memory=res.memory_mb * 1024 * 1024 if res.memory_mb else None,
            resources=res.custom or None,
            label_selector=res.node_labels or None,
            scheduling_strategy="SPREAD" if res.spread else "DEFAULT",
            max_restarts=0,  # the supervisor replaces a dead replica under a new name
        ).remote(spec, ReplicaConfig(name, slot, self._settings))

    def stop(self, handle: Any) -> None:
        ray.kill(handle, no_restart=True)

    def find(self, prefix: str) -> dict[str, Any]:
        """Live named replicas whose name starts with `prefix`."""
        found = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == RAY_NAMESPACE and entry["name"].startswith(prefix):
                try:
                    found[entry["name"]] = ray.get_actor(entry["name"], namespace=RAY_NAMESPACE)
                except ValueError:  # died between the listing and the lookup
                    continue
        return found

    async def describe(self, handle: Any) -> dict[str, SkillInfo]:
        """Wait until the replica is up and return its skills.

        Raises:
            SpecInvalid: the replica could not build the agent from its spec.
            ReplicaDied: the replica died while starting.
        """
        return dict(await handle.describe.remote())

    async def probe(self, handles: dict[str, Any]) -> dict[str, ReplicaHealth | None]:
        """Health of each replica; None for a dead one. A replica too busy to answer (its
        event loop blocked) is reported unresponsive, not dead: it is not replaced."""

        async def one(handle: Any) -> ReplicaHealth | None:
            answer = asyncio.ensure_future(_awaited(handle.health.remote()))
            try:
                done, _ = await asyncio.wait({answer}, timeout=PENDING_CHECK_S)
                if not done and _pending(handle):
                    answer.cancel()
                    return ReplicaHealth(pending=True)  # not placed yet: waits for resources
                # A replica of an older version answers a dict of the same fields.
                return ReplicaHealth.model_validate(await asyncio.wait_for(answer, PROBE_TIMEOUT_S))
            except RayActorError:
                return None
            except TimeoutError:
                return ReplicaHealth(unresponsive=True)

        results = await asyncio.gather(*(one(h) for h in handles.values()))
        return dict(zip(handles, results, strict=True))

    def request_resources(
        self, bundles: list[dict[str, float]], labels: list[dict[str, str]]
    ) -> None:
        """Ask Ray's autoscaler to make room for these replica shapes (the whole request,
        not an increment: it replaces the last one, and an empty list withdraws it)."""
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles, bundle_label_selectors=labels if any(labels) else None)


async def _awaited(ref: Any) -> Any:
    return await ref


def _pending(handle: Any) -> bool:
    """Whether the GCS says the actor is still waiting to be placed on a node."""
    info = ray._private.state.actors(actor_id=handle._actor_id.hex())
    return bool(info) and info.get("State") in _PENDING_STATES
