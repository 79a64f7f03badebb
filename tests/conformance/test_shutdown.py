"""Graceful shutdown: stop claiming, wait up to the shutdown timeout for
running jobs, hand back the rest (queued, attempt not counted) so another
worker takes them at once."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from conveyor import Conveyor, JobContext, JobState

from .conftest import needs
from .helpers import WAIT, wait_event, wait_thread_event

pytestmark = needs("lookup")


async def test_job_finishing_within_the_shutdown_timeout_completes(app: Conveyor, worker) -> None:
    started = asyncio.Event()

    @app.job("short", timeout=None)
    async def short(payload: Any) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    job = await app.enqueue("short", {})
    async with worker(app, shutdown_timeout=10):
        await wait_event(started)
    # the worker has stopped: the outcome is already stored
    stored = await app.get_job(job.id)
    assert stored.state is JobState.COMPLETED
    assert stored.result == "finished"
    assert stored.attempts == 1


async def test_job_outliving_the_shutdown_timeout_is_handed_back(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    contexts: list[JobContext] = []

    @app.job("endless", timeout=None)
    async def endless(payload: Any, ctx: JobContext) -> None:
        contexts.append(ctx)
        started.set()
        await asyncio.sleep(60)

    job = await app.enqueue("endless", {})
    t0 = time.monotonic()
    async with worker(app, shutdown_timeout=0.3):
        await wait_event(started)
        assert (await app.get_job(job.id)).attempts == 1
    assert time.monotonic() - t0 < 10
    stored = await app.get_job(job.id)
    assert stored.state is JobState.QUEUED
    assert stored.attempts == 0  # the interrupted attempt is not counted
    assert stored.started_at is None
    assert contexts[0].is_cancelled()


async def test_handed_back_job_is_taken_by_the_next_worker_at_once(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    runs: list[int] = []

    @app.job("resumable", timeout=None)
    async def resumable(payload: Any, ctx: JobContext) -> str:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            started.set()
            await asyncio.sleep(60)
        return "second worker"

    job = await app.enqueue("resumable", {})
    async with worker(app, shutdown_timeout=0.2):
        await wait_event(started)
    t0 = time.monotonic()
    # no lease to wait for: a long recover interval proves it was not recovery
    async with worker(app, recover_interval=60, lease=60):
        done = await app.wait(job.id, timeout=WAIT)
    assert time.monotonic() - t0 < 10
    assert done.state is JobState.COMPLETED
    assert done.result == "second worker"
    assert done.attempts == 1
    assert runs == [1, 1]


async def test_sync_job_outliving_the_shutdown_timeout_is_handed_back(
    app: Conveyor, worker
) -> None:
    started = threading.Event()
    told = threading.Event()

    @app.job("endless_sync", timeout=None)
    def endless(payload: Any, ctx: JobContext) -> None:
        started.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ctx.is_cancelled():
            time.sleep(0.01)
        if ctx.is_cancelled():
            told.set()

    job = await app.enqueue("endless_sync", {})
    async with worker(app, shutdown_timeout=0.3):
        await wait_thread_event(started)
    stored = await app.get_job(job.id)
    assert stored.state is JobState.QUEUED
    assert stored.attempts == 0
    await wait_thread_event(told)


async def test_stop_is_idempotent_and_no_new_jobs_start_after_it(app: Conveyor, worker) -> None:
    ran: list[Any] = []

    @app.job("rec")
    async def rec(payload: Any) -> None:
        ran.append(payload)

    w = worker(app)
    await w.start()
    first = await app.enqueue("rec", 1)
    await app.wait(first.id, timeout=WAIT)
    await w.stop()
    await w.stop()
    after = await app.enqueue("rec", 2)
    await asyncio.sleep(0.2)
    assert ran == [1]
    assert (await app.get_job(after.id)).state is JobState.QUEUED


async def test_run_returns_after_stop_is_requested(app: Conveyor, worker) -> None:
    @app.job("rec")
    async def rec(payload: Any) -> str:
        return "ran"

    w = worker(app)
    runner = asyncio.create_task(w.run())
    job = await app.enqueue("rec", {})
    assert (await app.wait(job.id, timeout=WAIT)).result == "ran"
    w.request_stop()
    async with asyncio.timeout(WAIT):
        await runner


async def test_stop_waits_for_acknowledgements_in_flight(app: Conveyor, worker) -> None:
    """A slow backend round trip (a remote server, a busy SQLite file) must not
    let stop() return before the last outcomes are stored: after stop the app
    may close the backend at once and the result would be lost."""
    started = asyncio.Event()
    real_finish = app.backend.finish

    async def slow_finish(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await real_finish(*args, **kwargs)

    app.backend.finish = slow_finish  # type: ignore[method-assign]

    @app.job("short", timeout=None)
    async def short(payload: Any) -> str:
        started.set()
        await asyncio.sleep(0.1)
        return "finished"

    job = await app.enqueue("short", {})
    async with worker(app, shutdown_timeout=10):
        await wait_event(started)
    stored = await app.get_job(job.id)
    assert stored.state is JobState.COMPLETED
