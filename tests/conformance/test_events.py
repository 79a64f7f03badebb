"""Lifecycle events: `app.on(name, callback)` with sync or async callbacks;
a raising callback never breaks the queue's own work."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from conveyor import Conveyor, Event, JobContext, JobState

from .conftest import needs
from .helpers import WAIT, eventually, wait_event

pytestmark = needs("lookup")

ALL = [
    "job.enqueued",
    "job.started",
    "job.completed",
    "job.failed",
    "job.retrying",
    "job.cancelled",
]


def record_all(app: Conveyor) -> dict[str, list[Event]]:
    seen: dict[str, list[Event]] = defaultdict(list)
    for name in ALL:
        app.on(name, lambda event: seen[event.name].append(event))
    return seen


def ids(events: list[Event]) -> list[str]:
    return [e.job.id for e in events]


async def test_lifecycle_of_a_completed_job(app: Conveyor, worker) -> None:
    seen = record_all(app)

    @app.job("ok")
    async def ok(payload: Any) -> str:
        return "fine"

    job = await app.enqueue("ok", {"x": 1})
    assert ids(seen["job.enqueued"]) == [job.id]
    assert seen["job.enqueued"][0].job.payload == {"x": 1}
    async with worker(app):
        await app.wait(job.id, timeout=WAIT)
    assert ids(seen["job.started"]) == [job.id]
    assert seen["job.started"][0].job.state is JobState.RUNNING
    assert seen["job.started"][0].job.attempts == 1
    assert ids(seen["job.completed"]) == [job.id]
    completed = seen["job.completed"][0]
    assert completed.name == "job.completed"
    assert completed.job.state is JobState.COMPLETED
    assert completed.job.result == "fine"
    assert completed.at > 0
    for name in ("job.failed", "job.retrying", "job.cancelled"):
        assert seen[name] == [], name


async def test_retrying_then_failed(app: Conveyor, worker) -> None:
    seen = record_all(app)

    @app.job("bad", retries=2, backoff=0.01)
    async def bad(payload: Any, ctx: JobContext) -> None:
        raise ValueError(f"attempt {ctx.attempt}")

    job = await app.enqueue("bad", {})
    async with worker(app):
        await app.wait(job.id, timeout=WAIT)
    assert ids(seen["job.started"]) == [job.id] * 3
    assert [e.job.attempts for e in seen["job.retrying"]] == [1, 2]
    assert all(
        e.job.state is JobState.SCHEDULED or e.job.state is JobState.QUEUED
        for e in seen["job.retrying"]
    )
    assert ids(seen["job.failed"]) == [job.id]
    failed = seen["job.failed"][0].job
    assert failed.state is JobState.FAILED
    assert "attempt 3" in failed.error
    assert seen["job.completed"] == []


async def test_cancelled_events_for_pending_and_running_jobs(app: Conveyor, worker) -> None:
    seen = record_all(app)
    started = asyncio.Event()

    @app.job("long", timeout=None)
    async def long(payload: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    pending = await app.enqueue("long", {}, delay=3600)
    await app.cancel(pending.id)
    running = await app.enqueue("long", {})
    async with worker(app):
        await wait_event(started)
        await app.cancel(running.id)
        await app.wait(running.id, timeout=WAIT)
    assert ids(seen["job.cancelled"]) == [pending.id, running.id]
    assert all(e.job.state is JobState.CANCELLED for e in seen["job.cancelled"])


async def test_async_callbacks_are_awaited(app: Conveyor, worker) -> None:
    seen: list[tuple[str, str]] = []

    async def slow_callback(event: Event) -> None:
        await asyncio.sleep(0.01)
        seen.append((event.name, event.job.id))

    for name in ("job.enqueued", "job.started", "job.completed"):
        app.on(name, slow_callback)

    @app.job("ok")
    async def ok(payload: Any) -> None:
        return None

    job = await app.enqueue("ok", {})
    async with worker(app):
        await app.wait(job.id, timeout=WAIT)
    # the worker drains its callbacks when it stops
    await eventually(lambda: len(seen) == 3, message="three async callbacks")
    assert sorted(seen) == sorted(
        [("job.enqueued", job.id), ("job.started", job.id), ("job.completed", job.id)]
    )


async def test_decorator_form(app: Conveyor, worker) -> None:
    seen: list[str] = []

    @app.on("job.completed")
    def on_done(event: Event) -> None:
        seen.append(event.job.id)

    assert callable(on_done)  # the decorator returns the callback

    @app.job("ok")
    async def ok(payload: Any) -> None:
        return None

    job = await app.enqueue("ok", {})
    async with worker(app):
        await app.wait(job.id, timeout=WAIT)
    assert seen == [job.id]


async def test_raising_callbacks_do_not_break_the_worker(app: Conveyor, worker) -> None:
    def explode(event: Event) -> None:
        raise RuntimeError("sync callback bug")

    async def explode_async(event: Event) -> None:
        raise RuntimeError("async callback bug")

    later: list[str] = []
    for name in ALL:
        app.on(name, explode)
        app.on(name, explode_async)
    app.on("job.completed", lambda event: later.append(event.job.id))

    @app.job("ok")
    async def ok(payload: int) -> int:
        return payload + 1

    @app.job("bad", retries=1, backoff=0.01)
    async def bad(payload: Any) -> None:
        raise ValueError("x")

    jobs = [await app.enqueue("ok", i) for i in range(5)]
    failing = await app.enqueue("bad", {})
    async with worker(app, concurrency=2):
        results = [(await app.wait(j.id, timeout=WAIT)).result for j in jobs]
        assert (await app.wait(failing.id, timeout=WAIT)).state is JobState.FAILED
        # the worker is still alive and working
        one_more = await app.enqueue("ok", 100)
        assert (await app.wait(one_more.id, timeout=WAIT)).result == 101
    assert results == [1, 2, 3, 4, 5]
    # callbacks registered after a raising one still run
    assert sorted(later) == sorted([j.id for j in jobs] + [one_more.id])


async def test_raising_enqueued_callback_does_not_break_enqueue(app: Conveyor) -> None:
    app.on("job.enqueued", lambda event: 1 / 0)

    @app.job("ok")
    async def ok(payload: Any) -> None:
        return None

    job = await app.enqueue("ok", {})
    assert (await app.get_job(job.id)).state is JobState.QUEUED
    jobs = await app.enqueue_many([("ok", 1), ("ok", 2)])
    assert len(jobs) == 2


async def test_enqueue_many_fires_one_event_per_new_job(app: Conveyor) -> None:
    seen = record_all(app)

    @app.job("ok")
    async def ok(payload: Any) -> None:
        return None

    jobs = await app.enqueue_many([("ok", 1, {"key": "a"}), ("ok", 2, {"key": "a"}), ("ok", 3)])
    assert ids(seen["job.enqueued"]) == [jobs[0].id, jobs[2].id]
