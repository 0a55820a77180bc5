"""`serve.task_runs`: the work of a task is cancelled by a cancel made in this replica at
once, and by one recorded elsewhere once its watcher reads the record; work that ends on its
own is answered, and nothing stays registered."""

from __future__ import annotations

import asyncio

import pytest

from serve import task_runs


async def _work(started: asyncio.Event, finished: list[str]) -> str:
    started.set()
    await asyncio.sleep(30)
    finished.append("the work ran to its end")
    return "done"


async def test_a_cancel_here_stops_the_work_at_once() -> None:
    started, finished = asyncio.Event(), list[str]()
    key = ("acme", "task", "t1")

    async def never() -> bool:
        return False

    run = asyncio.create_task(task_runs.run_cancellable(key, _work(started, finished), never))
    await started.wait()
    assert task_runs.cancel_here(key)
    with pytest.raises(asyncio.CancelledError):
        await run
    assert finished == [] and key not in task_runs._LOCAL
    assert not task_runs.cancel_here(key)  # nothing runs here any more


async def test_a_cancel_recorded_elsewhere_is_seen_by_the_watcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(task_runs, "WATCH_S", 0.01)
    started, finished, record = asyncio.Event(), list[str](), {"status": "running"}
    key = ("acme", "task", "t2")

    async def cancelled() -> bool:
        return record["status"] == "cancelled"

    run = asyncio.create_task(task_runs.run_cancellable(key, _work(started, finished), cancelled))
    await started.wait()
    record["status"] = "cancelled"  # another replica's cancel route wrote the record
    with pytest.raises(asyncio.CancelledError):
        await run
    assert finished == [] and key not in task_runs._LOCAL


async def test_work_that_ends_is_answered() -> None:
    async def quick() -> str:
        return "ok"

    async def never() -> bool:
        return False

    key = ("acme", "task", "t3")
    assert await task_runs.run_cancellable(key, quick(), never) == "ok"
    assert key not in task_runs._LOCAL
