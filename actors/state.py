"""Durable agent state: what a replica's agent instance keeps, saved to Redis and restored.

A class opts in by defining `get_state() -> dict` and `set_state(state: dict)`. The state
is saved after every task or message the replica handles, under the replica's slot (its
position in the pool, which a replacement inherits), so a replica that dies comes back
with the state it had reached. A message's acknowledgement is written in the same
transaction as the state it produced, so no message is applied twice or lost.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.errors import StoreUnavailable
from cluster.store import Store, redacted


class ReplicaState:
    """The saved state of one slot of one agent's pool."""

    def __init__(self, store: Store, agent_id: str, slot: int) -> None:
        self.store = store
        self.key = store.key("agentstate", agent_id, str(slot))

    def load(self) -> dict[str, Any] | None:
        raw = self.store.call(self.store.redis.get, self.key)
        return json.loads(raw) if raw else None

    async def save(
        self, state: dict[str, Any], acks: dict[str, tuple[str, list[str]]] | None = None
    ) -> None:
        """Write the state and, in the same transaction, acknowledge messages.

        `acks` maps a stream key to (consumer group, message ids).

        Raises:
            StoreUnavailable: Redis cannot be reached (the messages stay unacknowledged).
        """
        pipe = self.store.async_redis().pipeline(transaction=True)
        pipe.set(self.key, json.dumps(state))
        for stream, (group, ids) in (acks or {}).items():
            pipe.xack(stream, group, *ids)
        try:
            await pipe.execute()
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"Redis at {redacted(self.store.url)} is unreachable: {exc}"
            ) from None
