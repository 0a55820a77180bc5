"""Workflow triggers: start executions from topic messages and cron ticks, exactly once.

Exactly once holds with several supervisors and across restarts because each firing
has a deterministic execution id (`trigger-<workflow>-<source>-<message id or tick>`)
and starting an execution with an id that exists returns the existing one. A topic
is read through a consumer group (a message is acknowledged only after its execution
exists), and a cron tick is claimed with SET NX before it fires.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from actors.hub import CommunicationHub
from actors.messages import Message
from actors.workflow_service import WorkflowService
from cluster.errors import DafnckError
from cluster.streams import GroupReader
from workflows.expressions import render
from workflows.spec import Trigger, WorkflowSpec

log = logging.getLogger(__name__)

#: At most this many missed ticks of one schedule are fired after a pause.
MAX_CATCH_UP = 10
#: How long a fired tick's claim is kept (longer than any schedule's catch-up window).
CLAIM_TTL_S = 7 * 24 * 3600


def execution_id(workflow: str, source: str, event: str) -> str:
    digest = hashlib.sha256(f"{workflow}|{source}|{event}".encode()).hexdigest()[:24]
    return f"trigger-{digest}"


class TriggerRunner:
    """Fires the triggers of every defined workflow; `tick()` once a second or so."""

    def __init__(
        self,
        workflows: WorkflowService,
        hub: CommunicationHub,
        consumer: str,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.workflows = workflows
        self.hub = hub
        self.store = hub.store
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._readers: dict[tuple[str, str], GroupReader] = {}

    def _triggered(self) -> list[tuple[WorkflowSpec, int, Trigger]]:
        return [
            (spec, i, t) for spec in self.workflows.triggered() for i, t in enumerate(spec.triggers)
        ]

    async def tick(self, now: float | None = None) -> list[str]:
        """Fire what is due; returns the ids of the executions started (or found started)."""
        now = time.time() if now is None else now
        started: list[str] = []
        for spec, index, trigger in self._triggered():
            try:
                if trigger.cron:
                    started += await self._cron(spec, index, trigger, now)
                else:
                    started += await self._topic(spec, trigger)
            except DafnckError as exc:  # one bad trigger must not stop the others
                log.warning("trigger %d of %s failed: %s", index, spec.name, exc)
        return started

    async def _cron(
        self, spec: WorkflowSpec, index: int, trigger: Trigger, now: float
    ) -> list[str]:
        assert trigger.cron is not None
        source = f"cron{index}"
        last_key = self.store.key("trigger", spec.name, source, "last")
        client = self.store.async_redis()
        last = await client.get(last_key)
        schedule = croniter(trigger.cron, float(last) if last else now)
        if last is None:  # a new schedule fires from its next tick on, not for the past
            await client.set(last_key, schedule.get_prev(float), nx=True)
            return []
        started = []
        for _ in range(MAX_CATCH_UP):
            due = schedule.get_next(float)
            if due > now:
                break
            claim = self.store.key("trigger", spec.name, source, "fired", str(int(due)))
            if await client.set(claim, self.consumer, nx=True, ex=CLAIM_TTL_S):
                tick = datetime.fromtimestamp(due, UTC).isoformat()
                inputs = render(trigger.inputs, {"tick": tick})
                started.append(await self._start(spec, source, str(int(due)), inputs))
            await client.set(last_key, due)
        return started

    async def _topic(self, spec: WorkflowSpec, trigger: Trigger) -> list[str]:
        assert trigger.topic is not None
        key = (spec.name, trigger.topic)
        reader = self._readers.get(key)
        if reader is None:
            group = f"trigger.{spec.name}"
            reader = self._readers[key] = GroupReader(
                self.store,
                self.hub.topic_key(trigger.topic),
                group,
                self.consumer,
                claim_idle_ms=self.claim_idle_ms,
            )
            await reader.ensure_group("$")
        started = []
        for delivery in await reader.read(count=32, block_ms=0):
            message = Message.from_fields(delivery.fields)
            inputs = render(trigger.inputs, {"message": message.model_dump(mode="json")})
            started.append(await self._start(spec, f"topic:{trigger.topic}", delivery.id, inputs))
            await reader.ack(delivery.id)
        return started

    async def _start(self, spec: WorkflowSpec, source: str, event: str, inputs: Any) -> str:
        execution = await self.workflows.execute_workflow(
            spec.name, inputs, execution_id=execution_id(spec.name, source, event)
        )
        return execution.id
