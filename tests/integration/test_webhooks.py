"""Webhook delivery survives a supervisor restart: the dispatcher on the real Valkey, no Ray.
An end read but not delivered before the stop is delivered after it, with the same id."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from actors.events import EventBus
from actors.messages import DomainEvent
from actors.webhooks import WebhookDispatcher, WebhookPolicy, WebhookSpec, register_webhook
from cluster.settings import load_settings
from cluster.store import Store, connect_store
from cluster.streams import cancel_and_wait
from tests.fixtures.webhook_receiver import receiving
from workflows.store import BlobStore, ExecutionStore

FAST = WebhookPolicy(max_attempts=1000, base_s=0.02, cap_s=0.05)


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _end(execution_id: str) -> DomainEvent:
    return DomainEvent(
        type="execution.failed", subject=execution_id, data={"execution": execution_id}
    )


def _dispatcher_env(valkey_url: str, state_dir: Path) -> tuple[Store, ExecutionStore]:
    settings = load_settings(
        redis_url=valkey_url, state_dir=str(state_dir), tenant=f"wh{uuid.uuid4().hex[:8]}"
    )
    store = connect_store(settings)
    return store, ExecutionStore(store, BlobStore(settings.blobs))


def test_an_undelivered_end_is_delivered_after_a_restart_with_the_same_id(
    valkey_url: str, state_dir: Path
) -> None:
    store, executions = _dispatcher_env(valkey_url, state_dir)

    async def scenario() -> None:
        with receiving(failures=10**6) as receiver:
            register_webhook(store, "e1", WebhookSpec(url=receiver.url))  # type: ignore[arg-type]
            first = WebhookDispatcher(store, executions, FAST)
            running = asyncio.create_task(first.run())
            bus = EventBus(store)
            await bus.publish(_end("e1"))
            await bus.publish(_end("no-hook"))  # acknowledged without a call
            await _until(lambda: len(receiver.received) >= 2, "two failed attempts")
            await cancel_and_wait(running)  # the supervisor dies mid-retry
            await first.close()

            receiver.failures = 0
            # The restarted supervisor: a new process, so new connections.
            fresh = connect_store(load_settings(redis_url=store.url, tenant=store.tenant))
            again = WebhookDispatcher(fresh, executions, FAST)
            running = asyncio.create_task(again.run())
            key = store.key("webhook", "e1")
            await _until(lambda: store.redis.hget(key, "state") == "delivered", "the delivery")
            await cancel_and_wait(running)
            await again.close()

        ids = {headers["webhook-id"] for headers, _, _ in receiver.received}
        statuses = [status for _, _, status in receiver.received]
        assert len(ids) == 1 and statuses[-1] == 200 and set(statuses[:-1]) == {500}
        assert int(store.redis.hget(key, "attempts")) >= len(statuses) >= 3
        kinds = [e.type for _, e in executions.events("e1")]
        assert kinds.count("webhook.delivered") == 1
        assert kinds.count("webhook.attempt_failed") >= 1  # the last may die with its process
        ends = store.key("events", "execution.failed")
        assert store.redis.xpending(ends, "webhooks")["pending"] == 0

    asyncio.run(scenario())


def test_a_delivery_cut_short_is_taken_up_by_the_next_sweep(
    valkey_url: str, state_dir: Path
) -> None:
    store, executions = _dispatcher_env(valkey_url, state_dir)

    async def scenario() -> None:
        with receiving(failures=10**6) as receiver:
            register_webhook(store, "e2", WebhookSpec(url=receiver.url))  # type: ignore[arg-type]
            dispatcher = WebhookDispatcher(store, executions, FAST, sweep_s=0.2)
            running = asyncio.create_task(dispatcher.run())
            await EventBus(store).publish(_end("e2"))
            await _until(lambda: len(receiver.received) >= 2, "two failed attempts")
            await dispatcher.close()  # the delivery dies; the loop reading ends goes on
            receiver.failures = 0
            key = store.key("webhook", "e2")
            await _until(lambda: store.redis.hget(key, "state") == "delivered", "the sweep")
            await cancel_and_wait(running)
            await dispatcher.close()
        assert len({headers["webhook-id"] for headers, _, _ in receiver.received}) == 1

    asyncio.run(scenario())


def test_a_refusal_is_not_retried(valkey_url: str, state_dir: Path) -> None:
    store, executions = _dispatcher_env(valkey_url, state_dir)

    async def scenario() -> None:
        dispatcher = WebhookDispatcher(store, executions, FAST)
        with receiving(failures=0) as receiver:
            register_webhook(store, "e3", WebhookSpec(url=receiver.url + "/404"))  # type: ignore[arg-type]
            receiver.status_for = {"/hook/404": 404}
            end = _end("e3")
            await dispatcher.deliver("e3", receiver.url + "/404", "msg_e3", end)
        assert len(receiver.received) == 1
        record = store.redis.hgetall(store.key("webhook", "e3"))
        assert record["state"] == "failed" and record["last_status"] == "404"

    asyncio.run(scenario())


def test_a_new_tenant_stays_empty_until_an_execution_ends(valkey_url: str, state_dir: Path) -> None:
    """A restore needs an empty tenant: the dispatcher of a new supervisor writes nothing."""
    store, executions = _dispatcher_env(valkey_url, state_dir)

    async def scenario() -> None:
        dispatcher = WebhookDispatcher(store, executions, FAST, sweep_s=0.1)
        running = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(1.5)
        await cancel_and_wait(running)

    asyncio.run(scenario())
    assert list(store.redis.scan_iter(match=store.key("*"))) == []
