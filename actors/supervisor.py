"""The supervisor: creates agents, keeps their pools at the desired size, answers where a
capability's replicas are, and runs tasks for callers that don't route themselves.

`Supervisor` is the plain core (its launcher and registry arrive in `__init__`, so it is
unit-tested with fakes); `actors.system.SupervisorActor` is the detached, named,
restartable Ray shell, and `actors.contract` lists the operations it offers.
After a restart the core adopts the replicas that are still alive and starts the rest, so
pools come back from the registry alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.version import Version

from actors.admission import check_code, code_problems
from actors.autoscaler import PoolAutoscaler, resource_bundle
from actors.capacity import check_capacity
from actors.health import PoolHealth, ReplicaHealth
from actors.messages import DomainEvent
from actors.models import (
    AgentRecord,
    AgentSpec,
    AgentStatus,
    DiscoveryCriteria,
    SkillInfo,
    Task,
    TaskResult,
)
from actors.registry import AgentRegistry
from actors.router import PoolRouter, PoolView
from cluster import metrics
from cluster.allowlist import CodePolicy
from cluster.errors import AgentNotFound, DafnckError, SpecInvalid
from cluster.quotas import Quotas

log = logging.getLogger(__name__)

#: A caller that found a pool scaled to zero counts as load for this long (it polls again
#: well within it while it waits).
WAKE_WINDOW_S = 5.0
#: Longer than a caller's pool view lives (`PoolRouter` ttl_s, 2 s in clients).
RETIRE_GRACE_S = 3.0


class EventSink(Protocol):
    """Where agent events go (the event bus); optional, so tests need not have one."""

    async def publish(self, event: DomainEvent) -> str: ...


class Launcher(Protocol):
    """How the supervisor starts and watches replicas (Ray in production, fakes in tests)."""

    def start(self, spec: AgentSpec, name: str, slot: int = 0) -> Any: ...
    def stop(self, handle: Any) -> None: ...
    def find(self, prefix: str) -> dict[str, Any]: ...
    async def describe(self, handle: Any) -> dict[str, SkillInfo]: ...
    async def probe(self, handles: dict[str, Any]) -> dict[str, ReplicaHealth | None]: ...
    def request_resources(
        self, bundles: list[dict[str, float]], labels: list[dict[str, str]]
    ) -> None: ...


@dataclass
class Pool:
    """The live replicas of one agent version, as the supervisor sees them."""

    record: AgentRecord
    replicas: dict[str, Any] = field(default_factory=dict)
    health: dict[str, ReplicaHealth] = field(default_factory=dict)
    #: Replica name -> its slot; a replacement takes the lowest free slot (and its state).
    slots: dict[str, int] = field(default_factory=dict)

    def free_slot(self) -> int:
        taken = set(self.slots.values())
        return next(i for i in range(len(taken) + 1) if i not in taken)

    restarts: int = 0
    autoscaler: PoolAutoscaler | None = None
    #: When a caller last found the pool scaled to zero and waited for a replica.
    demand_at: float = -1e9
    #: Replicas taking no new tasks, stopped once idle: name -> (handle, since when).
    retiring: dict[str, tuple[Any, float]] = field(default_factory=dict)

    def replica_health(self, name: str) -> ReplicaHealth:
        """The replica's last probe; empty before the first."""
        return self.health.get(name) or ReplicaHealth()

    def view(self) -> PoolHealth:
        """The pool's health: sizes, load, restarts and each replica's last probe."""
        reports = {n: self.replica_health(n) for n in self.replicas}
        return PoolHealth(
            status=self.record.status.value,
            capabilities=self.record.spec.capabilities,
            desired=self.record.desired_replicas,
            running=len(self.replicas),
            in_flight=sum(r.in_flight or 0 for r in reports.values()),
            completed=sum(r.completed or 0 for r in reports.values()),
            restarts=self.restarts,
            pending=sum(1 for r in reports.values() if r.pending),
            retiring=len(self.retiring),
            autoscaling=self.record.spec.autoscaling is not None,
            replicas=reports,
        )


class Supervisor:
    """Orchestrates agent pools for one tenant."""

    def __init__(
        self,
        registry: AgentRegistry,
        launcher: Launcher,
        events: EventSink | None = None,
        policy: CodePolicy | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.registry = registry
        self.launcher = launcher
        self.events = events
        #: The operator's allow-lists a spec's code and secrets must pass before a replica
        #: starts (the Ray shell always gives it; replicas check again before importing).
        self.policy = policy
        #: The tenant's replica and CPU quotas, checked on apply and scale.
        self.quotas = quotas or Quotas()
        self.pools: dict[str, Pool] = {}
        #: Replica numbers only grow, so a replacement never reuses a dead replica's name.
        self._numbers: dict[str, itertools.count[int]] = {}
        self.router = PoolRouter(self.get_pool, ttl_s=0.5, blocking_source=False)
        self._lock = asyncio.Lock()
        #: Set when a caller waits on a pool scaled to zero: the reconcile loop runs at once.
        self.wake = asyncio.Event()
        #: A retiring replica is stopped no sooner than callers' pool views expire.
        self.retire_grace_s = RETIRE_GRACE_S
        self._requested: list[dict[str, float]] = []

    @property
    def _tenant(self) -> str:
        return self.registry.store.tenant

    def _prefix(self, agent_id: str) -> str:
        return f"{self.registry.store.tenant}/{agent_id}/"

    # -- agents ----------------------------------------------------------------------

    async def create_agent(self, spec: AgentSpec) -> AgentRecord:
        """Register `spec` and start its pool; the same spec again changes nothing.

        Raises:
            SpecInvalid: the spec names code or secrets the platform does not allow (no
                replica is started), or the entrypoint does not load or does not serve
                the capabilities.
        """
        if self.policy is not None:
            check_code(spec, self.policy)
        async with self._lock:
            pool = self.pools.get(spec.agent_id)
            if pool and pool.record.spec == spec and pool.replicas:
                if pool.record.status != AgentStatus.ACTIVE:
                    pool.record = self.registry.update_agent_status(
                        spec.agent_id, AgentStatus.ACTIVE
                    )
                return pool.record
            desired = min(max(spec.replicas.min, 1), spec.replicas.max)
            check_capacity(self.pools.values(), spec, desired, self.quotas, self._tenant)
            first_name = self._next_name(spec.agent_id)
            handle = self.launcher.start(spec, first_name)
            try:
                skills = await self.launcher.describe(handle)
            except DafnckError:
                self.launcher.stop(handle)
                raise
            if pool:  # same version, new spec that loads: replace the old replicas
                self._stop_all(pool)
            record = self.registry.register_agent(
                AgentRecord(spec=spec, skills=skills, desired_replicas=desired)
            )
            new = self.pools[spec.agent_id] = Pool(
                record, {first_name: handle}, slots={first_name: 0}
            )
            await self._reconcile_pool(new)
            await self._tell("agent.created", spec.agent_id, capabilities=spec.capabilities)
            return new.record

    async def remove_agent(self, agent_id: str) -> None:
        """Stop the pool and forget the agent. Raises: AgentNotFound."""
        async with self._lock:
            self.registry.deregister_agent(agent_id)
            pool = self.pools.pop(agent_id, None)
            if pool:
                self._stop_all(pool)
            await self._tell("agent.removed", agent_id)

    async def scale_agents(self, agent_id: str, replicas: int) -> AgentRecord:
        """Set the pool's desired size within the spec's min..max and start or stop replicas.

        Raises:
            AgentNotFound, SpecInvalid (outside min..max), QuotaExceeded (replicas, cpus).
        """
        async with self._lock:
            spec = self.registry.get(agent_id).spec
            check_capacity(self.pools.values(), spec, replicas, self.quotas, self._tenant)
            record = self.registry.set_desired_replicas(agent_id, replicas)
            pool = self.pools.setdefault(agent_id, Pool(record))
            pool.record = record
            await self._reconcile_pool(pool)
            await self._tell("agent.scaled", agent_id, replicas=replicas)
            return record

    async def update_agent_status(self, agent_id: str, status: AgentStatus) -> AgentRecord:
        async with self._lock:
            record = self.registry.update_agent_status(agent_id, status)
            pool = self.pools.setdefault(agent_id, Pool(record))
            pool.record = record
            await self._reconcile_pool(pool)
            await self._tell("agent.status_changed", agent_id, status=AgentStatus(status).value)
            return record

    # -- routing ---------------------------------------------------------------------

    def get_pool(self, capability: str, agent: str | None = None) -> PoolView:
        """The newest active agent version serving `capability` (within `agent`'s range).

        Raises:
            AgentNotFound: nothing active serves it; the message lists near names.
        """
        name, _, version = (agent or "").partition("@")
        criteria = DiscoveryCriteria(
            capability=capability, name=name or None, version=version or None
        )
        candidates = [
            p for p in self.pools.values()
            if p.record.status == AgentStatus.ACTIVE and criteria.matches(p.record)
        ]  # fmt: skip
        if not candidates:
            matching = [p.record for p in self.pools.values() if criteria.matches(p.record)]
            if matching:
                states = ", ".join(f"agent {r.agent_id!r} is {r.status.value}" for r in matching)
                raise AgentNotFound(capability, [], f"{states}; make it active to route to it")
            names = sorted({p.record.spec.name for p in self.pools.values()})
            if name and name not in names:
                raise AgentNotFound(str(agent), names)
            known = {c for p in self.pools.values() for c in p.record.spec.capabilities}
            raise AgentNotFound(
                f"{capability}" + (f" (agent {agent})" if agent else ""), sorted(known)
            )
        pool = max(candidates, key=lambda p: (bool(p.replicas), Version(p.record.spec.version)))
        spec = pool.record.spec
        if not pool.replicas and spec.autoscaling is not None:
            pool.demand_at = time.monotonic()  # a caller waits: wake the pool
            self.wake.set()
        return PoolView(
            agent_id=spec.agent_id,
            replicas=dict(pool.replicas),
            schemas={c: s.input_schema for c, s in pool.record.skills.items()},
            max_concurrency=spec.max_concurrency,
            max_queued=spec.max_queued,
            timeout_s=spec.timeout_s,
            retry=spec.retry,
            waking=spec.autoscaling is not None,
        )

    async def execute_task(self, task: Task) -> TaskResult:
        """Route and run one task from inside the supervisor (callers usually route themselves)."""
        return await self.router.run_async(task)

    # -- keeping pools right ---------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild pools from the registry after a (re)start, adopting live replicas."""
        async with self._lock:
            for record in self.registry.all():
                self._warn_if_refused(record.spec)
                found = self.launcher.find(self._prefix(record.agent_id))
                pool = Pool(record, found)
                numbers = [int(n.rsplit("/", 1)[1]) for n in found if n.rsplit("/", 1)[1].isdigit()]
                self._numbers[record.agent_id] = itertools.count(max(numbers, default=0) + 1)
                self.pools[record.agent_id] = pool
            await asyncio.gather(*(self._reconcile_pool(p) for p in self.pools.values()))

    def _warn_if_refused(self, spec: AgentSpec) -> None:
        """A stored spec the allow-lists refuse now (narrowed since it was applied, or never
        checked): its replicas refuse to load, so the operator is told why."""
        problems = code_problems(spec, self.policy) if self.policy is not None else []
        if problems:
            log.warning("agent %s names code or secrets the platform does not allow; its "
                        "replicas will not load it: %s", spec.agent_id, "; ".join(problems))  # fmt: skip

    async def reconcile(self) -> None:
        """Probe every replica; replace dead ones and match each pool's desired size."""
        async with self._lock:
            self.wake.clear()
            await asyncio.gather(*(self._reconcile_pool(p) for p in list(self.pools.values())))
            self._request_resources()

    async def _reconcile_pool(self, pool: Pool) -> None:
        health = await self.launcher.probe(pool.replicas)
        for name, report in health.items():
            if report is None:
                log.warning("replica %s is dead; replacing it", name)
                pool.replicas.pop(name, None)
                pool.health.pop(name, None)
                pool.slots.pop(name, None)
                pool.restarts += 1
            else:
                pool.health[name] = report
                slot = report.slot if report.slot is not None else pool.free_slot()
                pool.slots.setdefault(name, slot)
        await self._autoscale(pool)
        record = pool.record
        want = record.desired_replicas if record.status == AgentStatus.ACTIVE else 0
        if record.status == AgentStatus.DRAINING:
            want = len(pool.replicas)  # keep serving what they hold; nothing new is routed
        while len(pool.replicas) < want:
            name, slot = self._next_name(record.agent_id), pool.free_slot()
            pool.replicas[name] = self.launcher.start(record.spec, name, slot)
            pool.slots[name] = slot
        # An autoscaled pool shrinks gracefully: a surplus replica takes no new tasks and is
        # stopped once idle, so a routine downscale never fails the tasks it holds.
        graceful = record.status == AgentStatus.ACTIVE and record.spec.autoscaling is not None
        for name in self._least_loaded(pool)[: max(0, len(pool.replicas) - want)]:
            handle = pool.replicas.pop(name)
            pool.health.pop(name, None)
            if graceful:
                pool.retiring[name] = (handle, time.monotonic())
            else:
                self.launcher.stop(handle)
                pool.slots.pop(name, None)
        await self._retire(pool)

    async def _retire(self, pool: Pool) -> None:
        """Stop retiring replicas that are idle once no caller's pool view can list them
        (or that outlived the task timeout); the slot stays taken until then."""
        if not pool.retiring:
            return
        health = await self.launcher.probe({n: h for n, (h, _) in pool.retiring.items()})
        now = time.monotonic()
        for name, report in health.items():
            handle, since = pool.retiring[name]
            idle = report is None or not report.in_flight
            age = now - since
            if (idle and age >= self.retire_grace_s) or age >= pool.record.spec.timeout_s:
                del pool.retiring[name]
                pool.slots.pop(name, None)
                if report is not None:
                    self.launcher.stop(handle)

    @staticmethod
    def _least_loaded(pool: Pool) -> list[str]:
        """Replicas to stop first: the idlest, and of equals the newest."""
        names = list(pool.replicas)
        order = {n: i for i, n in enumerate(names)}
        return sorted(names, key=lambda n: (pool.replica_health(n).in_flight or 0, -order[n]))

    async def _autoscale(self, pool: Pool) -> None:
        """Apply the pool's autoscaling policy to its desired size (kept in the registry)."""
        record = pool.record
        if record.status != AgentStatus.ACTIVE or record.spec.autoscaling is None:
            return
        scaler = pool.autoscaler
        if scaler is None or scaler.policy != record.spec.autoscaling:
            scaler = pool.autoscaler = PoolAutoscaler.for_spec(record.spec)
        assert scaler is not None
        in_flight = sum(pool.replica_health(n).load for n in pool.replicas)
        waiting = int(time.monotonic() - pool.demand_at < WAKE_WINDOW_S)
        decision = scaler.decide(record.desired_replicas, in_flight, waiting)
        if decision is None:
            return
        pool.record = self.registry.set_desired_replicas(record.agent_id, decision.desired)
        log.info("autoscaling %s: %d -> %d replicas (%s, %d in flight)", record.agent_id,
                 decision.current, decision.desired, decision.reason, in_flight)  # fmt: skip
        metrics.POOL_AUTOSCALED.inc(agent=record.agent_id, outcome=decision.reason)
        await self._tell("agent.autoscaled", record.agent_id, **decision.as_event_data())

    def _request_resources(self) -> None:
        """Ask Ray's autoscaler for every replica's resources once any replica waits for them;
        the request follows the pools after that (so it shrinks again and idle nodes go)."""
        pending = any(r.pending for p in self.pools.values() for r in p.health.values())
        shapes = [
            (resource_bundle(p.record.spec), p.record.spec.resources.node_labels)
            for p in self.pools.values()
            for _ in range(len(p.replicas))
        ]
        shapes = [(b, labels) for b, labels in shapes if b]
        bundles = [b for b, _ in shapes]
        if bundles == self._requested or not (pending or self._requested):
            return
        self.launcher.request_resources(bundles, [labels for _, labels in shapes])
        self._requested = bundles

    async def _tell(self, kind: str, agent_id: str, **data: Any) -> None:
        if self.events is None:
            return
        try:
            await self.events.publish(DomainEvent(type=kind, subject=agent_id, data=data))
        except DafnckError as exc:  # the change happened; a lost notification must not undo it
            log.warning("could not publish %s for %s: %s", kind, agent_id, exc)

    def _next_name(self, agent_id: str) -> str:
        number = next(self._numbers.setdefault(agent_id, itertools.count(1)))
        return f"{self._prefix(agent_id)}{number}"

    def _stop_all(self, pool: Pool) -> None:
        for handle in [*pool.replicas.values(), *(h for h, _ in pool.retiring.values())]:
            self.launcher.stop(handle)
        pool.replicas.clear()
        pool.retiring.clear()
        pool.health.clear()
        pool.slots.clear()

    # -- health ----------------------------------------------------------------------

    def monitor_health(self) -> dict[str, Any]:
        """Pools (desired, running, load, restarts) and the store's latency."""
        store_ms: float | None = None
        with contextlib.suppress(DafnckError):  # a store outage is reported, not raised
            started = time.perf_counter()
            self.registry.store.ping()
            store_ms = (time.perf_counter() - started) * 1000
        pools = {agent_id: pool.view() for agent_id, pool in sorted(self.pools.items())}
        healthy = all(p.running >= p.desired for p in pools.values() if p.status == "active")
        return {
            "status": "unavailable" if store_ms is None else "ok" if healthy else "degraded",
            "store_latency_ms": None if store_ms is None else round(store_ms, 3),
            "pools": {agent_id: p.model_dump() for agent_id, p in pools.items()},
        }


def check_spec(data: Any, source: str) -> AgentSpec:
    """Parse one agent spec from YAML/JSON data; every problem is named with its field.

    Raises:
        SpecInvalid: listing each invalid field of `source`.
    """
    from pydantic import ValidationError

    try:
        return AgentSpec.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()]
        raise SpecInvalid(source, problems) from None
