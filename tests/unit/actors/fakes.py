"""A fake `Launcher` for the supervisor core: replicas are plain objects, no Ray.

It keeps Ray's one rule that matters to the supervisor: two live replicas cannot share
a name (Ray refuses a second named actor with `ActorAlreadyExistsError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.health import ReplicaHealth
from actors.kinds import build_skills
from actors.models import AgentSpec, SkillInfo


class NameTaken(ValueError):
    """What Ray raises when a named actor's name is already in use."""


@dataclass(eq=False)
class FakeReplica:
    spec: AgentSpec
    name: str
    alive: bool = True
    completed: int = 0
    slot: int = 0
    in_flight: int = 0
    #: Not placed on a node yet (waiting for resources).
    pending: bool = False


@dataclass
class FakeLauncher:
    """Starts fake replicas; the test marks them dead with `kill`."""

    live: dict[str, FakeReplica] = field(default_factory=dict)
    started: list[FakeReplica] = field(default_factory=list)
    stopped: list[FakeReplica] = field(default_factory=list)
    #: Each `request_resources` call: the bundles asked for.
    requests: list[list[dict[str, float]]] = field(default_factory=list)

    def start(self, spec: AgentSpec, name: str, slot: int = 0) -> FakeReplica:
        if name in self.live:
            raise NameTaken(f"the actor name {name!r} is already taken")
        replica = FakeReplica(spec, name, slot=slot)
        self.live[name] = replica
        self.started.append(replica)
        return replica

    def stop(self, handle: FakeReplica) -> None:
        handle.alive = False
        self.live.pop(handle.name, None)
        self.stopped.append(handle)

    def kill(self, name: str) -> FakeReplica:
        """The replica dies on its own (node lost, OOM): not through `stop`."""
        replica = self.live.pop(name)
        replica.alive = False
        return replica

    def find(self, prefix: str) -> dict[str, Any]:
        return {n: r for n, r in self.live.items() if n.startswith(prefix)}

    async def describe(self, handle: FakeReplica) -> dict[str, SkillInfo]:
        return {cap: s.info for cap, s in build_skills(handle.spec).items()}

    async def probe(self, handles: dict[str, Any]) -> dict[str, ReplicaHealth | None]:
        return {
            name: (
                ReplicaHealth(pending=True)
                if h.pending
                else ReplicaHealth(replica=name, in_flight=h.in_flight, completed=h.completed,
                                   slot=h.slot)
            )
            if h.alive
            else None
            for name, h in handles.items()
        }  # fmt: skip

    def request_resources(
        self, bundles: list[dict[str, float]], labels: list[dict[str, str]]
    ) -> None:
        self.requests.append(bundles)
