"""Triggers start each execution exactly once: per topic message and per cron tick, with
two supervisors at once and after a restart. No Ray: steps are never run here."""

from __future__ import annotations

from pathlib import Path

from actors.hub import CommunicationHub
from actors.messages import Message
from actors.models import AgentRecord, AgentSpec
from actors.registry import AgentRegistry
from actors.router import PoolRouter
from actors.triggers import TriggerRunner
from actors.workflow_service import AgentDispatcher, WorkflowService
from cluster.errors import AgentNotFound
from cluster.store import Store
from tests.unit.waiting import idle_past
from workflows.spec import WorkflowSpec
from workflows.store import BlobStore, ExecutionStore

MINUTE = 60.0
T0 = 1_800_000_000.0  # a whole minute


def _no_pools(capability: str, agent: str | None) -> object:
    raise AgentNotFound(capability)


def runner(store: Store, tmp_path: Path, name: str, claim_idle_ms: int = 30_000) -> TriggerRunner:
    registry = AgentRegistry(store)
    registry.register_agent(
        AgentRecord(spec=AgentSpec(name="w", capabilities=["x.y"], entrypoint="m:f"))
    )
    dispatcher = AgentDispatcher(PoolRouter(_no_pools), registry)
    service = WorkflowService(ExecutionStore(store, BlobStore(str(tmp_path))), registry, dispatcher)
    return TriggerRunner(
        service, CommunicationHub(store, registry), consumer=name, claim_idle_ms=claim_idle_ms
    )


def define(runner: TriggerRunner, **trigger: object) -> None:
    runner.workflows.define_workflow(WorkflowSpec.model_validate({
        "name": "triggered", "inputs": {"what": {"type": "string", "default": "-"}},
        "steps": [{"id": "a", "uses": "x.y"}], "triggers": [trigger],
    }))  # fmt: skip


async def test_cron_fires_each_tick_once_across_supervisors_and_restarts(
    store: Store, tmp_path: Path
) -> None:
    first, second = runner(store, tmp_path, "sup-1"), runner(store, tmp_path, "sup-2")
    define(first, cron="* * * * *", inputs={"what": "${{ tick }}"})
    assert await first.tick(T0 + 1) == []  # a new schedule starts from its next tick
    fired = await first.tick(T0 + MINUTE + 1)
    assert len(fired) == 1
    assert await second.tick(T0 + MINUTE + 2) == []  # the other supervisor: nothing new
    restarted = runner(store, tmp_path, "sup-1")
    assert await restarted.tick(T0 + MINUTE + 3) == []  # after a restart: nothing new
    later = await restarted.tick(T0 + 3 * MINUTE + 1)  # two ticks were missed while away
    assert len(later) == 2 and not set(later) & set(fired)
    inputs = first.workflows.get_execution_status(fired[0]).inputs
    assert inputs["what"].startswith("2027-01-15T08:01:00")


async def test_topic_message_starts_one_execution_even_when_redelivered(
    store: Store, tmp_path: Path
) -> None:
    first = runner(store, tmp_path, "sup-1", claim_idle_ms=50)
    define(first, topic="repo.changed", inputs={"what": "${{ message.payload.path }}"})
    assert await first.tick() == []  # the group exists from here on
    hub = first.hub
    await hub.publish("repo.changed", Message(sender="git", payload={"path": "a.py"}))
    await hub.publish("repo.changed", Message(sender="git", payload={"path": "b.py"}))
    fired = await first.tick()
    assert len(fired) == 2
    assert sorted(first.workflows.get_execution_status(i).inputs["what"] for i in fired) == [
        "a.py",
        "b.py",
    ]

    # A supervisor that started the execution but died before acknowledging the message:
    await hub.publish("repo.changed", Message(sender="git", payload={"path": "c.py"}))
    reader = first._readers[("triggered", "repo.changed")]
    (delivery,) = await reader.read(count=10, block_ms=0)
    from actors.triggers import execution_id

    await first.workflows.execute_workflow(
        "triggered",
        {"what": "c.py"},
        execution_id=execution_id("triggered", "topic:repo.changed", delivery.id),
    )
    # Idle past claim_idle_ms by the server's clock: the message is redelivered.
    await idle_past(store.redis, reader.stream_key, reader.group, 50)
    second = runner(store, tmp_path, "sup-2", claim_idle_ms=50)
    again = await second.tick()
    assert again == [execution_id("triggered", "topic:repo.changed", delivery.id)]
    executions = first.workflows.list_executions(limit=50)
    assert len(executions) == 3  # a.py, b.py, c.py: c.py started once
