"""Prefetch: a worker may claim jobs ahead of its free slots. They hold a lease
like running jobs, start as slots free, and go back to the queue (attempt not
counted) when the worker stops before starting them."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import Conveyor, JobState

from .conftest import needs
from .helpers import WAIT, eventually, wait_event

pytestmark = needs("lookup")


async def test_prefetched_jobs_all_run_exactly_once(app: Conveyor, worker) -> None:
    ran: list[int] = []

    @app.job("count")
    async def count(payload: int) -> int:
        ran.append(payload)
        return payload

    jobs = await app.enqueue_many([("count", i) for i in range(60)])
    async with worker(app, concurrency=2, prefetch=6):
        for job in jobs:
            done = await app.wait(job.id, timeout=WAIT)
            assert done.state is JobState.COMPLETED
            assert done.attempts == 1
    assert sorted(ran) == list(range(60))


@needs("concurrent_claims")
async def test_prefetched_jobs_are_handed_back_at_shutdown(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.job("hold", timeout=None)
    async def hold(payload: Any) -> None:
        started.set()
        await release.wait()

    jobs = [await app.enqueue("hold", i) for i in range(3)]
    w = worker(app, concurrency=1, prefetch=2, shutdown_timeout=0.2)
    await w.start()
    try:
        await wait_event(started)

        async def all_claimed() -> bool:
            states = [(await app.get_job(j.id)).state for j in jobs]  # type: ignore[union-attr]
            return all(s is JobState.RUNNING for s in states)

        # One runs, two wait in the worker's backlog, leased like running ones.
        await eventually(all_claimed, message="all three jobs claimed")
    finally:
        await w.stop()
    for job in jobs:
        back = await app.get_job(job.id)
        assert back is not None
        assert back.state is JobState.QUEUED
        assert back.attempts == 0  # handed back: the attempt does not count
    release.set()


@needs("concurrent_claims")
async def test_prefetched_jobs_keep_their_lease(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.job("hold", timeout=None)
    async def hold(payload: Any) -> None:
        started.set()
        await release.wait()

    jobs = [await app.enqueue("hold", i) for i in range(2)]
    # A lease far shorter than the wait: only heartbeats keep the waiting job.
    # (A lease of 0.5 s ran out under CI's load on SQS, whose beats go
    # through moto's server too: one beat took longer than the lease.)
    async with worker(app, concurrency=1, prefetch=1, lease=1.0, heartbeat_interval=0.1):
        await wait_event(started)
        await asyncio.sleep(2.5)
        states = [(await app.get_job(j.id)).state for j in jobs]  # type: ignore[union-attr]
        assert states == [JobState.RUNNING, JobState.RUNNING]
        release.set()
        for job in jobs:
            done = await app.wait(job.id, timeout=WAIT)
            assert done.state is JobState.COMPLETED
            assert done.attempts == 1 and done.stalls == 0
