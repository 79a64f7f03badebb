"""Leases, recovery and fencing (DESIGN section 2, first bullet).

Most of these drive the backend protocol directly with explicit `now` values,
so they are exact and need no sleeping; the last ones check that a worker
recovers expired leases on its own and that heartbeats keep a long job alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from conveyor import Conveyor, JobContext, JobState
from conveyor.backends.base import Heartbeat, LeaseStatus, Outcome, OutcomeKind, Retention

from .conftest import needs
from .helpers import WAIT, eventually, wait_event

pytestmark = needs("lookup")

Q = ["default"]
KEEP_ALL = Retention(keep_completed=None, keep_failed=None)


def register_noop(app: Conveyor) -> None:
    @app.job("work", retries=3)
    async def work(payload: Any) -> str:
        return "ran"


async def enqueue_one(app: Conveyor) -> str:
    register_noop(app)
    job = await app.enqueue("work", {"n": 1})
    return job.id


async def test_claim_takes_a_lease_and_counts_the_attempt(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    now = time.time()
    (claimed,) = await app.backend.claim(Q, 5, 10.0, now)
    assert claimed.id == job_id
    assert claimed.state is JobState.RUNNING
    assert claimed.attempts == 1
    assert claimed.started_at is not None
    assert abs(claimed.started_at.timestamp() - now) < 0.001
    assert await app.backend.claim(Q, 5, 10.0, now) == []  # held: nobody else gets it
    stored = await app.get_job(job_id)
    assert stored.state is JobState.RUNNING


@needs("driven_clock")
async def test_expired_lease_is_recovered_and_the_attempt_counted(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    backend = app.backend
    t0 = time.time()
    (first,) = await backend.claim(Q, 1, 1.0, t0)
    assert first.attempts == 1

    assert await backend.recover_expired(t0 + 0.5, 1) == []  # not expired yet
    assert (await app.get_job(job_id)).state is JobState.RUNNING

    (recovered,) = await backend.recover_expired(t0 + 2.0, 1)
    assert recovered.id == job_id
    assert recovered.state is JobState.QUEUED
    assert recovered.stalls == 1
    stored = await app.get_job(job_id)
    assert stored.state is JobState.QUEUED
    assert stored.stalls == 1

    (second,) = await backend.claim(Q, 1, 1.0, t0 + 2.0)
    assert second.id == job_id
    assert second.attempts == 2  # the lost attempt was counted


@needs("driven_clock")
async def test_job_fails_after_max_stalled_expiries(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    backend = app.backend
    t = time.time()
    max_stalled = 2
    for stall in range(1, max_stalled + 1):
        (claimed,) = await backend.claim(Q, 1, 1.0, t)
        assert claimed.attempts == stall
        t += 2.0
        (recovered,) = await backend.recover_expired(t, max_stalled)
        assert recovered.state is JobState.QUEUED
        assert recovered.stalls == stall
    (claimed,) = await backend.claim(Q, 1, 1.0, t)
    assert claimed.attempts == max_stalled + 1
    t += 2.0
    (dead,) = await backend.recover_expired(t, max_stalled)
    assert dead.state is JobState.FAILED
    assert dead.stalls == max_stalled + 1
    stored = await app.get_job(job_id)
    assert stored.state is JobState.FAILED
    assert "lease expired" in stored.error and str(max_stalled + 1) in stored.error
    assert stored.finished_at is not None
    assert await backend.claim(Q, 1, 1.0, t) == []


async def test_max_stalled_zero_fails_on_first_expiry(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    t = time.time()
    await app.backend.claim(Q, 1, 1.0, t)
    (dead,) = await app.backend.recover_expired(t + 2.0, 0)
    assert dead.state is JobState.FAILED
    assert (await app.get_job(job_id)).state is JobState.FAILED


async def test_heartbeat_extends_the_lease(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    backend = app.backend
    t0 = time.time()
    (claimed,) = await backend.claim(Q, 1, 1.0, t0)
    beat = [Heartbeat(job_id, claimed.token, [{"at": t0, "msg": "alive"}])]
    assert await backend.heartbeat(beat, 1.0, t0 + 0.8) == [LeaseStatus.HELD]
    # the lease now runs to t0 + 1.8: not expired at t0 + 1.5
    assert await backend.recover_expired(t0 + 1.5, 1) == []
    assert (await app.get_job(job_id)).state is JobState.RUNNING
    assert [e["msg"] for e in (await app.get_job(job_id)).logs] == ["alive"]
    (recovered,) = await backend.recover_expired(t0 + 2.0, 1)
    assert recovered.id == job_id


async def test_heartbeat_after_the_lease_expired_is_refused(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    t0 = time.time()
    (claimed,) = await app.backend.claim(Q, 1, 1.0, t0)
    # expired but not yet recovered: the worker must learn it lost the lease
    statuses = await app.backend.heartbeat([Heartbeat(job_id, claimed.token)], 1.0, t0 + 1.5)
    assert statuses == [LeaseStatus.LOST]


@needs("driven_clock")
async def test_zombie_worker_is_fenced_off(app: Conveyor) -> None:
    """claim (attempt 1), expire, recover, claim (attempt 2): everything the
    first worker says afterwards is refused and never overwrites attempt 2."""
    job_id = await enqueue_one(app)
    backend = app.backend
    t0 = time.time()
    (first,) = await backend.claim(Q, 1, 1.0, t0)
    assert first.attempts == 1
    await backend.recover_expired(t0 + 2.0, 3)
    (second,) = await backend.claim(Q, 1, 10.0, t0 + 2.0)
    assert second.attempts == 2
    old, new = first.token, second.token
    assert old != new

    zombie_beat = await backend.heartbeat([Heartbeat(job_id, old)], 10.0, t0 + 2.1)
    assert zombie_beat == [LeaseStatus.LOST]
    assert await backend.progress(job_id, old, 77.0, [{"at": t0, "msg": "zombie"}]) is False
    zombie_done = Outcome(job_id, old, OutcomeKind.COMPLETED, t0 + 2.2, result='"zombie"')
    assert await backend.finish([zombie_done], KEEP_ALL) == [False]
    zombie_fail = Outcome(job_id, old, OutcomeKind.FAILED, t0 + 2.2, error="zombie error")
    assert await backend.finish([zombie_fail], KEEP_ALL) == [False]

    mid = await app.get_job(job_id)
    assert mid.state is JobState.RUNNING
    assert mid.attempts == 2
    assert mid.progress != 77.0
    assert all(entry["msg"] != "zombie" for entry in mid.logs)

    assert await backend.heartbeat([Heartbeat(job_id, new)], 10.0, t0 + 2.3) == [LeaseStatus.HELD]
    assert await backend.progress(job_id, new, 50.0, []) is True
    winner = Outcome(job_id, new, OutcomeKind.COMPLETED, t0 + 2.4, result='"winner"')
    assert await backend.finish([winner], KEEP_ALL) == [True]

    final = await app.get_job(job_id)
    assert final.state is JobState.COMPLETED
    assert final.result == "winner"
    assert final.attempts == 2
    assert final.error is None

    # and even later, the zombie still cannot change the finished job
    assert await backend.finish([zombie_done], KEEP_ALL) == [False]
    assert await backend.finish([winner], KEEP_ALL) == [False]  # no double finish either
    assert (await app.get_job(job_id)).result == "winner"


@needs("concurrent_claims")
async def test_finish_batch_reports_each_outcome(app: Conveyor) -> None:
    register_noop(app)
    jobs = [await app.enqueue("work", {"n": i}) for i in range(3)]
    t0 = time.time()
    claimed = await app.backend.claim(Q, 3, 10.0, t0)
    assert [j.id for j in claimed] == [j.id for j in jobs]
    outcomes = [
        Outcome(jobs[0].id, claimed[0].token, OutcomeKind.COMPLETED, t0 + 1, result="1"),
        Outcome(jobs[1].id, "wrong-token", OutcomeKind.COMPLETED, t0 + 1, result="2"),
        Outcome(jobs[2].id, claimed[2].token, OutcomeKind.FAILED, t0 + 1, error="E"),
    ]
    assert await app.backend.finish(outcomes, KEEP_ALL) == [True, False, True]
    states = [(await app.get_job(j.id)).state for j in jobs]
    assert states == [JobState.COMPLETED, JobState.RUNNING, JobState.FAILED]


async def test_worker_recovers_a_dead_workers_job(app: Conveyor, worker) -> None:
    """Recovery is on by default: a job whose worker died (claimed, never
    heartbeated) is taken again by a live worker, its attempt counted."""
    attempts: list[int] = []

    @app.job("work", retries=0)
    async def work(payload: Any, ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        return "recovered"

    job = await app.enqueue("work", {})
    (claimed,) = await app.backend.claim(Q, 1, 0.2, time.time())  # the "dead" worker
    assert claimed.attempts == 1
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == "recovered"
    assert done.attempts == 2
    assert done.stalls == 1
    assert attempts == [2]


async def test_heartbeats_keep_a_job_longer_than_its_lease(app: Conveyor, worker) -> None:
    attempts: list[int] = []

    @app.job("long", timeout=None)
    async def long(payload: Any, ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        await asyncio.sleep(2.5)
        return "done"

    job = await app.enqueue("long", {})
    # Two and a half leases; a lease of a second, not less: on a busy machine
    # one heartbeat to an emulated broker (moto) has taken over 0.4 s.
    async with worker(app, lease=1.0, heartbeat_interval=0.05, recover_interval=0.05):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.attempts == 1
    assert done.stalls == 0
    assert attempts == [1]


@needs("driven_clock")
async def test_worker_that_lost_its_lease_abandons_the_attempt(app: Conveyor, worker) -> None:
    """The worker's heartbeat is refused (another recovery took the job): the
    handler is told to stop and its late result is not recorded."""
    started = asyncio.Event()
    stolen_now = asyncio.Event()
    contexts: list[JobContext] = []

    @app.job("long", timeout=None, retries=0)
    async def long(payload: Any, ctx: JobContext) -> str:
        contexts.append(ctx)
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            # Keep the worker's only slot until the job is stolen: freed at
            # once, the worker could claim the recovered job itself first
            # (seen in CI on PostgreSQL), which is not what is tested here.
            while not stolen_now.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await stolen_now.wait()
            raise
        return "zombie"

    job = await app.enqueue("long", {})
    async with worker(app, concurrency=1, recover_interval=60, heartbeat_interval=0.05):
        await wait_event(started)
        # Another process recovers and re-claims the job behind this worker's back.
        future = time.time() + 120
        await app.backend.recover_expired(future, 5)
        (stolen,) = await app.backend.claim(Q, 1, 600.0, future)
        stolen_now.set()
        assert stolen.attempts == 2

        async def told() -> bool:
            return contexts[0].is_cancelled()

        async with asyncio.timeout(WAIT):
            while not await told():  # noqa: ASYNC110 - polls the backend
                await asyncio.sleep(0.01)
    current = await app.get_job(job.id)
    assert current.state is JobState.RUNNING
    assert current.attempts == 2
    assert current.result is None


async def test_recovery_failure_fires_job_failed(app: Conveyor, worker) -> None:
    register_noop(app)
    failed: list[Any] = []
    app.on("job.failed", lambda event: failed.append(event.job))
    job = await app.enqueue("work", {})
    await app.backend.claim(Q, 1, 0.1, time.time())  # a worker that dies at once
    async with worker(app, max_stalled=0):
        done = await app.wait(job.id, timeout=WAIT)
        # Where a worker's claim may fail the job first (bullmq://: BullMQ's
        # deferred failure of a job stalled too often), the event comes with
        # the next recovery pass, a moment after the state shows.
        await eventually(lambda: failed, message="job.failed")
        await asyncio.sleep(0.1)  # a recovery pass or two: no second event
    assert done.state is JobState.FAILED
    assert "lease expired" in done.error
    assert [j.id for j in failed] == [job.id]


async def test_two_workers_never_run_a_job_twice(app: Conveyor, worker) -> None:
    runs: dict[int, int] = {}

    @app.job("once")
    async def once(payload: int) -> None:
        runs[payload] = runs.get(payload, 0) + 1
        await asyncio.sleep(0.005)

    jobs = await app.enqueue_many([("once", i) for i in range(60)])
    async with worker(app, concurrency=5), worker(app, concurrency=5):
        for job in jobs:
            await app.wait(job.id, timeout=WAIT)
    assert runs == {i: 1 for i in range(60)}
    for job in jobs:
        assert (await app.get_job(job.id)).attempts == 1


@needs("concurrent_claims")
async def test_concurrent_claims_hand_each_job_out_once(app: Conveyor) -> None:
    register_noop(app)
    jobs = await app.enqueue_many([("work", i) for i in range(30)])
    now = time.time()
    batches = await asyncio.gather(*(app.backend.claim(Q, 4, 30.0, now) for _ in range(10)))
    claimed = [j.id for batch in batches for j in batch]
    assert len(claimed) == len(set(claimed)) == 30
    assert set(claimed) == {j.id for j in jobs}


async def test_cancel_of_a_running_job_survives_its_worker_dying(app: Conveyor) -> None:
    """cancel() of a running job returned True: if its worker dies before it
    learns of the cancel, recovery must not run the job again."""
    job_id = await enqueue_one(app)
    t0 = time.time()
    await app.backend.claim(Q, 1, 1.0, t0)
    assert await app.cancel(job_id) is True  # running: requested
    await app.backend.recover_expired(t0 + 2.0, 5)
    assert await app.backend.claim(Q, 1, 1.0, t0 + 2.0) == []
    assert (await app.get_job(job_id)).state is JobState.CANCELLED


async def test_cancel_of_a_running_job_survives_a_hand_back(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    t0 = time.time()
    (claimed,) = await app.backend.claim(Q, 1, 10.0, t0)
    assert await app.cancel(job_id) is True
    handed_back = Outcome(job_id, claimed.token, OutcomeKind.QUEUED, t0 + 1)
    assert await app.backend.finish([handed_back], KEEP_ALL) == [True]
    assert await app.backend.claim(Q, 1, 10.0, t0 + 1) == []
    assert (await app.get_job(job_id)).state is JobState.CANCELLED
