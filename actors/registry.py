"""The agent registry: one Redis hash per tenant, agent id (`name@version`) -> record.

Several versions of one agent live side by side; discovery filters by capability, name,
version range, status and tags. Reads are one HGETALL, writes one optimistic
transaction, so any process may use the registry without going through an actor.

Every task routed, message broadcast and A2A call reads the registry, so reads go through
the process's registry cache (`cluster.cache`, L1 only: L2 would cost the same round trip
as the HGETALL it saves). Each write returns once every listening process has dropped its
copy; a write made around the registry (a restore) is seen within `REGISTRY_L1_TTL_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actors.models import AgentRecord, AgentStatus, DiscoveryCriteria, SkillInfo
from cluster.cache import CacheManager, shared_cache
from cluster.errors import AgentNotFound, SpecInvalid
from cluster.store import Store, unavailable_as_error

#: How long a process may serve a registry it was not told changed (see the module doc).
REGISTRY_L1_TTL_S = 5.0
_ALL = "agents"


def registry_cache(store: Store) -> CacheManager:
    """The process's cache of a tenant's registry (one listener per pool and tenant)."""
    return shared_cache(store, "registrycache", l1_maxsize=4, l1_ttl_s=REGISTRY_L1_TTL_S, l2=False)


class AgentRegistry:
    """Registration and discovery of agents; the records live in Redis."""

    def __init__(self, store: Store, cache: CacheManager | None = None) -> None:
        self.store = store
        self.cache = cache or registry_cache(store)
        self._key = store.key("agents")

    @unavailable_as_error
    def register_agent(self, record: AgentRecord) -> AgentRecord:
        """Insert or replace the record of `name@version`; the first registration time stays."""

        def change(old: AgentRecord | None) -> AgentRecord:
            first = old.registered_at if old else record.registered_at
            return record.model_copy(update={"registered_at": first, "updated_at": time.time()})

        return self._update(record.agent_id, change, must_exist=False)

    @unavailable_as_error
    def get(self, agent_id: str) -> AgentRecord:
        """Raises: AgentNotFound."""
        records = self._records()
        record = records.get(agent_id)
        if record is None:
            raise AgentNotFound(agent_id, list(records))
        return record

    @unavailable_as_error
    def all(self) -> list[AgentRecord]:
        """Every record, by agent id."""
        return list(self._records().values())

    def _records(self) -> dict[str, AgentRecord]:
        """agent id -> record, sorted by id; from the cache (read-only: records are frozen)."""

        def load() -> dict[str, AgentRecord]:
            raw = self.store.redis.hgetall(self._key)
            records = (AgentRecord.model_validate_json(v) for v in raw.values())
            return {r.agent_id: r for r in sorted(records, key=lambda r: r.agent_id)}

        records: dict[str, AgentRecord] = self.cache.fetch(_ALL, load)
        return records

    def discover_agents(self, criteria: DiscoveryCriteria | None = None) -> list[AgentRecord]:
        criteria = criteria or DiscoveryCriteria()
        return [r for r in self.all() if criteria.matches(r)]

    def get_agent_capabilities(self, agent_id: str) -> dict[str, SkillInfo]:
        """Raises: AgentNotFound."""
        return self.get(agent_id).skills

    @unavailable_as_error
    def update_agent_status(self, agent_id: str, status: AgentStatus) -> AgentRecord:
        """Raises: AgentNotFound."""
        return self._update(
            agent_id, lambda old: _touch(_existing(old), status=AgentStatus(status))
        )

    @unavailable_as_error
    def set_desired_replicas(self, agent_id: str, replicas: int) -> AgentRecord:
        """Raises: AgentNotFound, SpecInvalid when outside the spec's min..max."""

        def change(old: AgentRecord | None) -> AgentRecord:
            old = _existing(old)
            low, high = old.spec.replicas.min, old.spec.replicas.max
            if not low <= replicas <= high:
                raise SpecInvalid(
                    f"scale of {agent_id!r}", [f"replicas: {replicas} is outside {low}..{high}"]
                )
            return _touch(old, desired_replicas=replicas)

        return self._update(agent_id, change)

    @unavailable_as_error
    def deregister_agent(self, agent_id: str) -> None:
        """Raises: AgentNotFound."""
        if not self.store.redis.hdel(self._key, agent_id):
            raise AgentNotFound(agent_id, self._ids())
        self.cache.invalidate(_ALL)

    def resolve(self, name_or_id: str) -> list[AgentRecord]:
        """Records matching an agent id, a bare name, or `name@<version range>`."""
        name, _, version = name_or_id.partition("@")
        criteria = DiscoveryCriteria(name=name, version=version or None)
        found = self.discover_agents(criteria)
        if not found:
            raise AgentNotFound(name_or_id, self._ids())
        return found

    def _ids(self) -> list[str]:
        return [str(k) for k in self.store.redis.hkeys(self._key)]

    def _update(
        self,
        agent_id: str,
        change: Callable[[AgentRecord | None], AgentRecord],
        *,
        must_exist: bool = True,
    ) -> AgentRecord:
        """Read, change and write one record in a WATCH/MULTI transaction."""
        result: list[AgentRecord] = []

        def txn(pipe: Any) -> None:
            raw = pipe.hget(self._key, agent_id)
            if raw is None and must_exist:
                raise AgentNotFound(agent_id, [str(k) for k in pipe.hkeys(self._key)])
            new = change(AgentRecord.model_validate_json(raw) if raw else None)
            pipe.multi()
            pipe.hset(self._key, agent_id, new.model_dump_json())
            result.append(new)

        self.store.redis.transaction(txn, self._key)
        self.cache.invalidate(_ALL)
        return result[-1]


def _existing(record: AgentRecord | None) -> AgentRecord:
    assert record is not None, "_update(must_exist=True) passes the stored record"
    return record


def _touch(record: AgentRecord, **update: object) -> AgentRecord:
    return record.model_copy(update={**update, "updated_at": time.time()})
