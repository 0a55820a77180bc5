"""Conversation memory in the real session Valkey: bounded, once per append, shared by replicas."""

from __future__ import annotations

from actors.llm_effects import LLMEffects
from actors.llm_memory import ConversationMemory, estimate_tokens
from actors.models import AgentSpec, LLMConfig, MemoryConfig, Task, TaskContext
from cluster.settings import Settings
from cluster.store import Store, connect_store


def said(*texts: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": t} for t in texts]


async def test_memory_keeps_the_newest_messages(store: Store) -> None:
    memory = ConversationMemory(store, "writer", MemoryConfig(max_messages=3))
    await memory.append("s1", said("a", "b"), "t1")
    await memory.append("s1", said("c", "d"), "t2")
    assert [m["content"] for m in await memory.load("s1")] == ["b", "c", "d"]
    assert await memory.load("s2") == []


async def test_memory_bounded_by_tokens_drops_the_oldest(store: Store) -> None:
    long = "x" * 400  # about 100 tokens each
    per = estimate_tokens(said(long)[0])
    memory = ConversationMemory(store, "writer", MemoryConfig(max_tokens=per * 2 + 1))
    await memory.append("s", said(long + "1", long + "2", long + "3"), "t1")
    assert [m["content"][-1] for m in await memory.load("s")] == ["2", "3"]


async def test_an_append_applied_again_is_ignored(store: Store) -> None:
    memory = ConversationMemory(store, "writer", MemoryConfig())
    assert await memory.append("s", said("hi"), "task-1:1")
    assert not await memory.append("s", said("hi"), "task-1:1")  # the task ran again
    assert len(await memory.load("s")) == 1


async def test_memory_survives_a_new_replica(store: Store, settings: Settings) -> None:
    spec = AgentSpec(
        name="writer",
        capabilities=["text.write"],
        kind="llm",
        llm=LLMConfig(provider="openai", model="m", memory=MemoryConfig(ttl_s=60)),
    )
    task = Task(capability="text.write", context=TaskContext(execution_id="e", step_id="s"))
    await LLMEffects.for_task(store, spec, task).memory_append("chat", said("remember me"))
    other = connect_store(settings)  # a replacement replica, its own connection
    try:
        fresh = LLMEffects.for_task(other, spec, task)
        assert await fresh.memory_load("chat") == said("remember me")
        assert 0 < other.redis.pttl(other.key("llm", "memory", "writer", "chat")) <= 60_000
    finally:
        other.close()


async def test_without_memory_nothing_is_kept(store: Store) -> None:
    memory = ConversationMemory(store, "writer", None)
    assert not await memory.append("s", said("hi"), "t")
    assert await memory.load("s") == []
