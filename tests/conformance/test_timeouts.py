"""Timeouts: per type and per job; an async handler is cancelled, a sync one is
told through `ctx` and the job fails (or is retried) as timed out; `None`
disables the timeout."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from conveyor import Conveyor, JobContext, JobState

from .conftest import needs
from .helpers import WAIT, wait_thread_event

pytestmark = needs("lookup")


async def test_async_handler_is_cancelled_on_timeout(app: Conveyor, worker) -> None:
    contexts: list[JobContext] = []
    was_cancelled = asyncio.Event()

    @app.job("slow", timeout=0.2, retries=0)
    async def slow(payload: Any, ctx: JobContext) -> None:
        contexts.append(ctx)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            was_cancelled.set()
            raise

    job = await app.enqueue("slow", {})
    started = time.monotonic()
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert time.monotonic() - started < 10
    assert was_cancelled.is_set()
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert "timed out" in done.error.lower() or "timeout" in done.error.lower()
    (ctx,) = contexts
    assert ctx.is_cancelled()
    assert ctx.cancelled.is_set()


async def test_timed_out_job_is_retried_then_completes(app: Conveyor, worker) -> None:
    retrying: list[Any] = []
    app.on("job.retrying", lambda event: retrying.append(event.job))

    @app.job("slow_once", timeout=0.2, retries=2, backoff=0.01)
    async def slow_once(payload: Any, ctx: JobContext) -> int:
        if ctx.attempt == 1:
            await asyncio.sleep(30)
        return ctx.attempt

    job = await app.enqueue("slow_once", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.attempts == 2
    assert done.result == 2
    assert len(retrying) == 1
    assert "time" in retrying[0].error.lower()


async def test_sync_handler_sees_is_cancelled_on_timeout(app: Conveyor, worker) -> None:
    saw_cancel = threading.Event()

    @app.job("slow_sync", timeout=0.2, retries=0)
    def slow_sync(payload: Any, ctx: JobContext) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if ctx.is_cancelled():
                saw_cancel.set()
                return
            time.sleep(0.01)

    job = await app.enqueue("slow_sync", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
        await wait_thread_event(saw_cancel)
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert "time" in done.error.lower()


async def test_per_job_timeout_overrides_the_type(app: Conveyor, worker) -> None:
    @app.job("sleepy", timeout=None, retries=0)
    async def sleepy(payload: float) -> str:
        await asyncio.sleep(payload)
        return "woke"

    timed = await app.enqueue("sleepy", 30, timeout=0.2)
    assert timed.timeout == 0.2
    async with worker(app):
        done = await app.wait(timed.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert "time" in done.error.lower()


async def test_timeout_none_disables_the_timeout(app: Conveyor, worker) -> None:
    @app.job("sleepy", timeout=0.1, retries=0)
    async def sleepy(payload: float) -> str:
        await asyncio.sleep(payload)
        return "woke"

    short = await app.enqueue("sleepy", 1.0)  # the type's 0.1 s applies
    unlimited = await app.enqueue("sleepy", 0.5, timeout=None)
    assert unlimited.timeout is None
    async with worker(app):
        done_unlimited = await app.wait(unlimited.id, timeout=WAIT)
        done_short = await app.wait(short.id, timeout=WAIT)
    assert done_unlimited.state is JobState.COMPLETED
    assert done_unlimited.result == "woke"
    assert done_short.state is JobState.FAILED


async def test_sync_handler_with_timeout_none_runs_to_the_end(app: Conveyor, worker) -> None:
    @app.job("sleepy_sync", timeout=None, retries=0)
    def sleepy(payload: float) -> str:
        time.sleep(payload)
        return "woke"

    job = await app.enqueue("sleepy_sync", 0.3)
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == "woke"


async def test_default_timeout_is_30_seconds(app: Conveyor) -> None:
    @app.job("plain")
    async def plain(payload: Any) -> None:
        return None

    job = await app.enqueue("plain", {})
    assert job.timeout == 30
    assert (await app.get_job(job.id)).timeout == 30
