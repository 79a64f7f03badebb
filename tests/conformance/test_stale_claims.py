"""A claim is only good for its lease. A worker whose claim reply comes back
after the lease ran out (the process was frozen, SIGSTOP or a debugger, with
the reply unread) must not start those jobs: another worker may have taken
them. Likewise a prefetched job whose lease lapsed while heartbeats failed.
And jobs of a claim still in flight when the worker is told to stop go back
to the queue without being started."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from conveyor import Conveyor, Job, JobContext, JobState

from .conftest import needs
from .faults import BackendFaults
from .helpers import WAIT, eventually, wait_event, wait_state

pytestmark = needs("lookup")

LEASE = 0.5


def _logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(all(w in r.getMessage() for w in words) for r in caplog.records)


async def test_claim_whose_lease_ran_out_in_flight_is_not_started(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    faults = BackendFaults(app.backend)
    frozen: list[Job] = []

    async def frozen_past_the_lease(name: str, jobs: list[Job]) -> None:
        if not frozen:
            frozen.extend(jobs)
            # The reply sits unread while the process is stopped: by the time
            # the worker sees it, the lease is long gone.
            await asyncio.sleep(LEASE * 3)

    faults.after_claim = frozen_past_the_lease
    attempts: list[int] = []

    @app.job("once", timeout=None)
    async def once(payload: Any, ctx: JobContext) -> int:
        attempts.append(ctx.attempt)
        return ctx.attempt

    job = await app.enqueue("once", {})
    caplog.set_level(logging.WARNING, "conveyor.worker")
    async with worker(app, concurrency=1, lease=LEASE):
        done = await app.wait(job.id, timeout=WAIT)
    assert [j.id for j in frozen] == [job.id]
    # The stale claim (attempt 1) never ran; the job's lease expired, it was
    # recovered and claimed again, and that claim ran it.
    assert attempts == [2]
    assert done.state is JobState.COMPLETED
    assert done.result == 2
    assert _logged(caplog, job.id, "lease ran out"), "the dropped claim is logged"


@needs("concurrent_claims")
async def test_prefetched_job_whose_lease_lapsed_is_not_started(app: Conveyor, worker) -> None:
    faults = BackendFaults(app.backend)
    first_started = asyncio.Event()
    release = asyncio.Event()
    runs: list[tuple[int, int]] = []

    @app.job("hold", timeout=None)
    async def hold(payload: int, ctx: JobContext) -> int:
        runs.append((payload, ctx.attempt))
        if payload == 0:
            first_started.set()
            await release.wait()
        return payload

    first = await app.enqueue("hold", 0)
    second = await app.enqueue("hold", 1)
    w = worker(app, concurrency=1, prefetch=1, lease=LEASE)
    async with w:
        await wait_event(first_started)
        await wait_state(app, second.id, JobState.RUNNING)  # claimed, waiting in the worker
        faults.break_()
        # Heartbeats fail for longer than the lease: the waiting job's claim lapses.
        await asyncio.sleep(LEASE * 3)
        release.set()  # the slot frees while the backend is still away
        await eventually(lambda: not w.running_jobs, message="the first job to end")
        faults.heal()
        done = await app.wait(second.id, timeout=WAIT)
        await app.wait(first.id, timeout=WAIT)
    assert (1, 1) not in runs, runs  # the lapsed claim never started
    assert done.state is JobState.COMPLETED
    assert done.attempts == 2


@needs("concurrent_claims")
async def test_jobs_of_a_claim_in_flight_at_stop_go_back_unstarted(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    faults = BackendFaults(app.backend)
    ran: list[Any] = []

    @app.job("never", timeout=None)
    async def never(payload: Any) -> None:
        ran.append(payload)

    jobs = [await app.enqueue("never", n) for n in range(3)]
    caplog.set_level(logging.INFO, "conveyor.worker")
    w = worker(app, concurrency=3)
    claimed = asyncio.Event()
    in_flight: list[Job] = []  # what the claims in flight at the stop brought

    async def stop_arrives(name: str, got: list[Job]) -> None:
        # SIGTERM lands while the claim's reply is on its way (on a backend
        # with two claim lanes, each may bring part of the three).
        in_flight.extend(got)
        w.request_stop()
        claimed.set()

    faults.after_claim = stop_arrives
    await w.start()
    try:
        await wait_event(claimed)
    finally:
        await w.stop()
    assert ran == []
    for job in jobs:
        back = await app.get_job(job.id)
        assert back is not None
        assert back.state is JobState.QUEUED
        assert back.attempts == 0  # handed back: the attempt does not count
        assert back.started_at is None
    assert in_flight and len({job.id for job in in_flight}) == len(in_flight)
    assert w.stats()["handed_back"] == len(in_flight)
    assert w.stats()["finished"] == 0
    # The last line counts them apart (it used to say "stopped after 3 job(s)").
    assert _logged(caplog, f"stopped: 0 job(s) finished, {len(in_flight)} handed back")


async def test_sync_handler_whose_thread_begins_after_its_lease_ran_out_does_not_run(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker checked the claim when it handed the job to a thread; the
    thread then began the handler whenever it got to run. A process frozen in
    between (SIGSTOP, seen in the Pub/Sub chaos run) resumed past the lease and
    the thread ran a job another worker may have taken meanwhile. The thread
    itself checks the lease before it calls the handler now."""
    faults = BackendFaults(app.backend)
    lapsed = threading.Event()  # set while no heartbeat could renew the lease
    runs: list[tuple[int, bool]] = []

    @app.job("sync.once", timeout=None)
    def once(payload: Any, ctx: JobContext) -> int:
        runs.append((ctx.attempt, lapsed.is_set()))
        return ctx.attempt

    caplog.set_level(logging.WARNING, "conveyor.worker")
    w = worker(app, concurrency=1, lease=LEASE, max_abandoned_threads=0)
    async with w:
        # Stand-in for the freeze: the handler's thread cannot begin (the
        # pool's one thread is busy) while heartbeats fail past the lease.
        busy = threading.Event()
        assert w._threads is not None
        w._threads._pool.submit(busy.wait)
        started = asyncio.Event()
        app.on("job.started", lambda job: started.set())
        job = await app.enqueue("sync.once", {})
        await wait_event(started)
        faults.break_()
        lapsed.set()
        await asyncio.sleep(LEASE * 3)
        busy.set()  # the thread begins now, its lease long gone
        await asyncio.sleep(0.2)
        lapsed.clear()
        faults.heal()
        done = await app.wait(job.id, timeout=WAIT)
    assert all(not during for _, during in runs), runs  # nothing began on a lapsed lease
    assert done.state is JobState.COMPLETED
    assert len(runs) == 1
    assert _logged(caplog, job.id, "lease ran out"), "the lapsed start is logged"


async def test_async_handler_whose_start_came_after_its_lease_ran_out_does_not_run(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for an async handler: the worker checks the claim when it
    dispatches the job, and the handler begins a step of the event loop later.
    A freeze in between (here, a job.started callback that blocks the loop
    past the lease, as a stopped process would) must not start it stale."""
    frozen: list[Any] = []  # the token of the claim the freeze hit
    runs: list[Any] = []  # the token of each claim the handler ran under

    @app.job("async.once", timeout=None)
    async def once(payload: Any, ctx: JobContext) -> int:
        runs.append(ctx.job.token)
        return ctx.attempt

    def frozen_once(event: Any) -> None:
        if not frozen:
            frozen.append(event.job.token)
            time.sleep(LEASE * 3)  # the whole loop stands still: no heartbeat either

    app.on("job.started", frozen_once)
    caplog.set_level(logging.WARNING, "conveyor.worker")
    job = await app.enqueue("async.once", {})
    async with worker(app, concurrency=1, lease=LEASE):
        done = await app.wait(job.id, timeout=WAIT)
    assert frozen and frozen[0] not in runs, (frozen, runs)  # the lapsed claim never ran
    assert done.state is JobState.COMPLETED
    assert len(runs) == 1
    assert _logged(caplog, job.id, "lease ran out"), "the lapsed start is logged"
