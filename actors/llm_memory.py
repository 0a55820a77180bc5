"""Conversation memory of an LLM agent: one Redis list per (agent, session), bounded by
messages and tokens, so any replica (or a replacement after a restart) sees it.

An append is one Lua script: it pushes the messages, trims the oldest past the bounds,
and remembers the append's id so a task run again after a crash does not append twice.
Tokens are estimated as a quarter of the message's JSON length (no tokenizer needed, and
the same on every replica).
"""

from __future__ import annotations

import json
from typing import Any

from actors.models import MemoryConfig
from cluster.store import Store

#: Applied append ids kept per session, for deduplication (older ones are forgotten).
_APPLIED_KEPT = 256

#: KEYS: messages, token counts, applied ids. ARGV: append id, max messages, max tokens
#: (0: none), ttl ms (0: none), then (tokens, message JSON) pairs. Returns 1 if appended.
_APPEND_LUA = """
if redis.call('LPOS', KEYS[3], ARGV[1]) then return 0 end
for i = 5, #ARGV, 2 do
  redis.call('RPUSH', KEYS[2], ARGV[i])
  redis.call('RPUSH', KEYS[1], ARGV[i + 1])
end
local max_messages, max_tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
while redis.call('LLEN', KEYS[1]) > max_messages do
  redis.call('LPOP', KEYS[1]); redis.call('LPOP', KEYS[2])
end
if max_tokens > 0 then
  local counts = redis.call('LRANGE', KEYS[2], 0, -1)
  local total = 0
  for _, n in ipairs(counts) do total = total + tonumber(n) end
  local i = 1
  while total > max_tokens and redis.call('LLEN', KEYS[1]) > 1 do
    total = total - tonumber(counts[i]); i = i + 1
    redis.call('LPOP', KEYS[1]); redis.call('LPOP', KEYS[2])
  end
end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], -APPLIED_KEPT, -1)
local ttl = tonumber(ARGV[4])
for k = 1, 3 do
  if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) else redis.call('PERSIST', KEYS[k]) end
end
return 1
""".replace("APPLIED_KEPT", str(_APPLIED_KEPT))


def estimate_tokens(message: dict[str, Any]) -> int:
    """About four characters of JSON per token, at least one."""
    return max(1, len(json.dumps(message, separators=(",", ":"))) // 4)


class ConversationMemory:
    """The sessions of one agent; `None` config means the agent keeps no memory."""

    def __init__(self, store: Store, agent: str, config: MemoryConfig | None) -> None:
        self.store = store
        self.agent = agent
        self.config = config

    def _keys(self, session: str) -> list[str]:
        base = self.store.key("llm", "memory", self.agent, session)
        return [base, f"{base}:tokens", f"{base}:applied"]

    async def load(self, session: str) -> list[dict[str, Any]]:
        """The session's messages, oldest first ([] without memory or for a new session)."""
        if self.config is None:
            return []
        raw = await self.store.async_redis().lrange(self._keys(session)[0], 0, -1)
        return [json.loads(item) for item in raw]

    async def append(self, session: str, messages: list[dict[str, Any]], append_id: str) -> bool:
        """Add messages once per `append_id`, trimming the oldest past the bounds.

        Returns False when this append was already applied.
        """
        if self.config is None or not messages:
            return False
        argv: list[Any] = [
            append_id,
            self.config.max_messages,
            self.config.max_tokens or 0,
            int((self.config.ttl_s or 0) * 1000),
        ]
        for message in messages:
            argv += [estimate_tokens(message), json.dumps(message, separators=(",", ":"))]
        script = self.store.async_redis().register_script(_APPEND_LUA)
        return bool(await script(keys=self._keys(session), args=argv))

    async def clear(self, session: str) -> None:
        await self.store.async_redis().delete(*self._keys(session))


__all__ = ["ConversationMemory", "estimate_tokens"]
