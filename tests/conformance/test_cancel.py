"""Cancellation: a pending job never runs; a running one is told through
`ctx.cancelled` (its task cancelled if async) and ends `cancelled`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from conveyor import Conveyor, JobContext, JobState

from .conftest import needs
from .helpers import WAIT, wait_event, wait_thread_event

pytestmark = needs("lookup")


async def test_cancel_queued_job_never_runs(app: Conveyor, worker) -> None:
    ran: list[Any] = []

    @app.job("rec")
    async def rec(payload: Any) -> None:
        ran.append(payload)

    victim = await app.enqueue("rec", "victim")
    assert await app.cancel(victim.id) is True
    cancelled = await app.get_job(victim.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.attempts == 0

    sentinel = await app.enqueue("rec", "sentinel")
    async with worker(app, concurrency=1):
        await app.wait(sentinel.id, timeout=WAIT)
    assert ran == ["sentinel"]
    assert (await app.get_job(victim.id)).state is JobState.CANCELLED
    assert (await app.wait(victim.id, timeout=1)).state is JobState.CANCELLED


async def test_cancel_scheduled_job_never_runs(app: Conveyor, worker) -> None:
    ran: list[Any] = []

    @app.job("rec")
    async def rec(payload: Any) -> None:
        ran.append(payload)

    victim = await app.enqueue("rec", "victim", delay=0.2)
    assert await app.cancel(victim.id) is True
    assert (await app.get_job(victim.id)).state is JobState.CANCELLED
    await asyncio.sleep(0.3)  # now it would be due
    sentinel = await app.enqueue("rec", "sentinel")
    async with worker(app, concurrency=1):
        await app.wait(sentinel.id, timeout=WAIT)
    assert ran == ["sentinel"]
    assert (await app.get_job(victim.id)).state is JobState.CANCELLED


async def test_cancel_unknown_or_finished_returns_false(app: Conveyor, worker) -> None:
    @app.job("noop")
    async def noop(payload: Any) -> None:
        return None

    assert await app.cancel("no-such-job") is False
    job = await app.enqueue("noop", {})
    async with worker(app):
        await app.wait(job.id, timeout=WAIT)
    assert await app.cancel(job.id) is False
    assert (await app.get_job(job.id)).state is JobState.COMPLETED


async def test_cancel_running_async_job_cancels_its_task(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    task_cancelled = asyncio.Event()
    contexts: list[JobContext] = []

    @app.job("long", timeout=None, retries=3)
    async def long(payload: Any, ctx: JobContext) -> None:
        contexts.append(ctx)
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            task_cancelled.set()
            raise

    cancelled_events: list[Any] = []
    app.on("job.cancelled", lambda event: cancelled_events.append(event.job))
    job = await app.enqueue("long", {})
    async with worker(app):
        await wait_event(started)
        assert (await app.get_job(job.id)).state is JobState.RUNNING
        assert await app.cancel(job.id) is True
        done = await app.wait(job.id, timeout=WAIT)
    assert task_cancelled.is_set()
    assert contexts[0].cancelled.is_set()
    assert done.state is JobState.CANCELLED
    assert done.attempts == 1
    assert [j.id for j in cancelled_events] == [job.id]


async def test_cancel_running_async_job_that_watches_ctx_cancelled(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    noticed = asyncio.Event()

    @app.job("watcher", timeout=None)
    async def watcher(payload: Any, ctx: JobContext) -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await ctx.cancelled.wait()
        noticed.set()
        return "stopped early"

    job = await app.enqueue("watcher", {})
    async with worker(app):
        await wait_event(started)
        assert await app.cancel(job.id) is True
        done = await app.wait(job.id, timeout=WAIT)
    assert noticed.is_set()
    assert done.state is JobState.CANCELLED


async def test_cancel_running_sync_job_polling_is_cancelled(app: Conveyor, worker) -> None:
    started = threading.Event()
    noticed = threading.Event()

    @app.job("poller", timeout=None)
    def poller(payload: Any, ctx: JobContext) -> None:
        started.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if ctx.is_cancelled():
                noticed.set()
                return
            time.sleep(0.01)
        raise AssertionError("never told to stop")

    job = await app.enqueue("poller", {})
    async with worker(app):
        await wait_thread_event(started)
        assert await app.cancel(job.id) is True
        done = await app.wait(job.id, timeout=WAIT)
    assert noticed.is_set()
    assert done.state is JobState.CANCELLED
    assert done.attempts == 1


async def test_cancelled_running_job_is_not_retried(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    attempts: list[int] = []

    @app.job("long", timeout=None, retries=5, backoff=0.01)
    async def long(payload: Any, ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        started.set()
        await asyncio.sleep(60)

    job = await app.enqueue("long", {})
    sentinel_ran = asyncio.Event()

    @app.job("sentinel")
    async def sentinel(payload: Any) -> None:
        sentinel_ran.set()

    async with worker(app, concurrency=1):
        await wait_event(started)
        await app.cancel(job.id)
        await app.wait(job.id, timeout=WAIT)
        after = await app.enqueue("sentinel", {})
        await app.wait(after.id, timeout=WAIT)
    assert attempts == [1]
    assert (await app.get_job(job.id)).state is JobState.CANCELLED


async def test_pending_cancel_fires_job_cancelled(app: Conveyor) -> None:
    @app.job("noop")
    async def noop(payload: Any) -> None:
        return None

    seen: list[Any] = []
    app.on("job.cancelled", lambda event: seen.append(event.job))
    job = await app.enqueue("noop", {})
    await app.cancel(job.id)
    assert [j.id for j in seen] == [job.id]
    assert seen[0].state is JobState.CANCELLED
