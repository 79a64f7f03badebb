"""How the worker stops a job its handler will not end by itself: a sync
handler that ignores a cancel is still stopped at its timeout; prefetched
jobs go back when abandoned threads hold every slot; a job told to stop
before its task first ran still ends. (What handlers raise or return that
no ordinary path expects runs on every backend:
tests/conformance/test_handler_escapes.py.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor import Conveyor, JobState


async def test_a_cancelled_sync_handler_that_ignores_it_is_still_timed_out() -> None:
    """Cancelling a running sync job tells its handler (ctx.is_cancelled());
    one that does not look must still be stopped at its timeout (its thread
    abandoned, the job cancelled), not hold its slot and stay running."""
    app = Conveyor("memory://")
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    @app.job("deaf", timeout=1.0)
    def deaf(payload: Any) -> None:
        loop.call_soon_threadsafe(started.set)
        time.sleep(4)  # never looks at ctx.is_cancelled()

    async with app, app.worker(heartbeat_interval=0.1, shutdown_timeout=0.5):
        job = await app.enqueue("deaf", {})
        await asyncio.wait_for(started.wait(), 10)
        await app.cancel(job.id)
        began = time.monotonic()
        done = await app.wait(job.id, timeout=10)
        assert done.state is JobState.CANCELLED
        assert time.monotonic() - began < 2.5, "the cancel switched the job's timeout off"


async def test_prefetched_jobs_go_back_when_abandoned_threads_take_every_slot() -> None:
    """A worker whose every slot is taken by abandoned threads (hung sync
    handlers past max_abandoned_threads) runs nothing until they return,
    maybe never: the jobs it prefetched go back to the queue for others,
    rather than wait there with their leases renewed."""
    app = Conveyor("memory://")
    loop = asyncio.get_running_loop()
    hung = asyncio.Event()

    @app.job("hang", timeout=0.3, retries=0)
    def hang(payload: Any) -> None:
        loop.call_soon_threadsafe(hung.set)
        time.sleep(4)

    @app.job("quick")
    async def quick(payload: Any) -> None:
        return None

    async with app:
        await app.enqueue("hang", {})
        quick_ones = [await app.enqueue("quick", {"n": n}) for n in range(2)]
        stuck = app.worker(concurrency=1, prefetch=2, max_abandoned_threads=0, shutdown_timeout=0.2)
        async with stuck:
            await asyncio.wait_for(hung.wait(), 10)
            async with app.worker(concurrency=2):
                for job in quick_ones:
                    done = await app.wait(job.id, timeout=2.5)
                    assert done.state is JobState.COMPLETED


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_job_told_to_stop_before_its_task_first_ran_still_ends(kind: str) -> None:
    """A heartbeat may answer "cancelled" for a job whose task was created
    but has not run a step yet (a backend that answers without yielding):
    cancelling that task then would skip all of `_execute`, its `finally`
    too, leaving the job in the worker's running set for ever (a slot lost,
    a drain that never ends) and no outcome sent."""
    app = Conveyor("memory://")
    ran: list[str] = []

    if kind == "async":

        @app.job("j")
        async def j_async(payload: Any) -> None:
            ran.append("ran")

    else:

        @app.job("j")
        def j_sync(payload: Any) -> None:
            ran.append("ran")

    async with app, app.worker(concurrency=1, poll_interval=60) as worker:
        job = await app.enqueue("j", {})
        (claimed,) = await app.backend.claim(["default"], 1, 30.0)
        await app.cancel(job.id)  # asked while it runs: the heartbeat says so
        worker._claims.claimed([claimed], worker._clock())
        worker._start_job(claimed)  # its task is made, not yet run
        running = worker._running[claimed.id]
        worker._tell_stop(running, "cancelled")
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert claimed.id not in worker._running, "the job stayed in the running set"
        done = await app.wait(job.id, timeout=5)
        assert done.state is JobState.CANCELLED and ran == []
