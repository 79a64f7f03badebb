"""Inspecting and administering: get_job, wait, stats, list_jobs, purge, retry."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from conveyor import Conveyor, InvalidOptionError, JobState, JobTimeoutError, UnknownJobError

from .conftest import needs
from .helpers import WAIT, wait_event

pytestmark = needs("lookup")

STATES = {s.value for s in JobState}


def register(app: Conveyor) -> None:
    @app.job("ok")
    async def ok(payload: Any) -> Any:
        return payload

    @app.job("bad", retries=0)
    async def bad(payload: Any) -> None:
        raise RuntimeError("bad")

    @app.job("other", queue="other")
    async def other(payload: Any) -> None:
        return None


async def test_get_job_of_unknown_id_is_none(app: Conveyor) -> None:
    assert await app.get_job("0123456789abcdef") is None
    assert await app.get_job("") is None
    assert await app.get_job_by_key("no-such-key") is None


async def test_wait_times_out_with_job_timeout_error(app: Conveyor) -> None:
    register(app)
    job = await app.enqueue("ok", {})  # no worker: stays queued
    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match=job.id):
        await app.wait(job.id, timeout=0.2)
    assert 0.15 <= time.monotonic() - started < 5
    assert isinstance(JobTimeoutError("x"), TimeoutError)
    assert (await app.get_job(job.id)).state is JobState.QUEUED


async def test_wait_for_unknown_job_raises(app: Conveyor) -> None:
    with pytest.raises(UnknownJobError):
        await app.wait("no-such-job", timeout=1)


async def test_wait_returns_at_once_for_a_final_job(app: Conveyor) -> None:
    register(app)
    job = await app.enqueue("ok", {})
    await app.cancel(job.id)
    done = await app.wait(job.id, timeout=0.01)
    assert done.state is JobState.CANCELLED


async def test_stats_counts_per_queue_and_state(app: Conveyor, worker) -> None:
    register(app)
    assert all(not any(counts.values()) for counts in (await app.stats()).values())
    done = [await app.enqueue("ok", i) for i in range(3)]
    failed = await app.enqueue("bad", {})
    async with worker(app, queues=["default"]):
        for job in [*done, failed]:
            await app.wait(job.id, timeout=WAIT)
    await app.enqueue("ok", "queued")
    await app.enqueue("ok", "later", delay=3600)
    cancelled = await app.enqueue("ok", "cancel me")
    await app.cancel(cancelled.id)
    await app.enqueue("other", 1)
    await app.enqueue("other", 2)

    stats = await app.stats()
    assert set(stats) == {"default", "other"}
    assert set(stats["default"]) == STATES  # zeros included
    assert stats["default"] == {
        "scheduled": 1,
        "queued": 1,
        "running": 0,
        "completed": 3,
        "failed": 1,
        "cancelled": 1,
    }
    assert stats["other"] == {
        "scheduled": 0,
        "queued": 2,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }


async def test_stats_counts_running_jobs(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.job("hold", timeout=None)
    async def hold(payload: Any) -> None:
        started.set()
        await release.wait()

    job = await app.enqueue("hold", {})
    async with worker(app):
        await wait_event(started)
        assert (await app.stats())["default"]["running"] == 1
        assert [j.id for j in await app.list_jobs(state="running")] == [job.id]
        release.set()
        await app.wait(job.id, timeout=WAIT)
    assert (await app.stats())["default"]["running"] == 0


async def test_list_jobs_filters(app: Conveyor, worker) -> None:
    register(app)
    oks = [await app.enqueue("ok", i) for i in range(4)]
    bad = await app.enqueue("bad", {})
    others = [await app.enqueue("other", i) for i in range(2)]
    async with worker(app, queues=["default"]):
        await app.wait(oks[0].id, timeout=WAIT)
        await app.wait(oks[1].id, timeout=WAIT)
        await app.wait(bad.id, timeout=WAIT)
        await app.wait(oks[2].id, timeout=WAIT)
        await app.wait(oks[3].id, timeout=WAIT)
    await app.cancel(others[0].id)

    everything = await app.list_jobs(limit=100)
    assert len(everything) == 7
    # newest first
    assert [j.id for j in everything] == [j.id for j in reversed([*oks, bad, *others])]

    completed = await app.list_jobs(state=JobState.COMPLETED)
    assert sorted(j.id for j in completed) == sorted(j.id for j in oks)
    assert [j.id for j in await app.list_jobs(state="failed")] == [bad.id]
    assert [j.id for j in await app.list_jobs(state=JobState.CANCELLED)] == [others[0].id]
    assert [j.id for j in await app.list_jobs(state=JobState.QUEUED)] == [others[1].id]
    assert await app.list_jobs(state=JobState.RUNNING) == []

    by_name = await app.list_jobs(name="bad")
    assert [j.id for j in by_name] == [bad.id]
    by_queue = await app.list_jobs(queue="other")
    assert [j.id for j in by_queue] == [others[1].id, others[0].id]
    combined = await app.list_jobs(state=JobState.COMPLETED, name="ok", queue="default")
    assert len(combined) == 4
    assert await app.list_jobs(name="ok", queue="other") == []

    limited = await app.list_jobs(name="ok", limit=2)
    assert [j.id for j in limited] == [oks[3].id, oks[2].id]
    page2 = await app.list_jobs(name="ok", limit=2, offset=2)
    assert [j.id for j in page2] == [oks[1].id, oks[0].id]
    assert await app.list_jobs(limit=0) == []


async def test_list_jobs_bad_arguments(app: Conveyor) -> None:
    with pytest.raises(InvalidOptionError, match="state"):
        await app.list_jobs(state="exploded")
    with pytest.raises(InvalidOptionError):
        await app.list_jobs(limit=-1)


async def test_purge_by_state(app: Conveyor, worker) -> None:
    register(app)
    oks = [await app.enqueue("ok", i) for i in range(3)]
    bads = [await app.enqueue("bad", i) for i in range(2)]
    queued = await app.enqueue("other", {})
    async with worker(app, queues=["default"]):
        for job in [*oks, *bads]:
            await app.wait(job.id, timeout=WAIT)

    assert await app.purge(JobState.COMPLETED) == 3
    for job in oks:
        assert await app.get_job(job.id) is None
    assert (await app.stats())["default"]["failed"] == 2
    assert await app.purge("failed") == 2
    assert await app.list_jobs(state=JobState.FAILED) == []
    assert (await app.get_job(queued.id)).state is JobState.QUEUED
    assert await app.purge(JobState.COMPLETED) == 0


async def test_purge_older_than(app: Conveyor, worker) -> None:
    register(app)
    jobs = [await app.enqueue("ok", i) for i in range(3)]
    async with worker(app, queues=["default"]):
        for job in jobs:
            await app.wait(job.id, timeout=WAIT)
    # all finished moments ago: none is older than an hour
    assert await app.purge(JobState.COMPLETED, older_than=3600) == 0
    assert await app.purge(JobState.COMPLETED, older_than=timedelta(hours=1)) == 0
    assert len(await app.list_jobs(state=JobState.COMPLETED)) == 3
    await asyncio.sleep(0.05)
    assert await app.purge(JobState.COMPLETED, older_than=0.01) == 3
    with pytest.raises(InvalidOptionError):
        await app.purge(JobState.COMPLETED, older_than=-1)


async def test_purge_older_than_splits_old_from_new(app: Conveyor, worker) -> None:
    register(app)
    old = await app.enqueue("ok", "old")
    async with worker(app, queues=["default"]):
        await app.wait(old.id, timeout=WAIT)
        await asyncio.sleep(0.6)
        new = await app.enqueue("ok", "new")
        await app.wait(new.id, timeout=WAIT)
    assert await app.purge(JobState.COMPLETED, older_than=0.3) == 1
    assert await app.get_job(old.id) is None
    assert (await app.get_job(new.id)).state is JobState.COMPLETED


async def test_purge_several_states_and_a_queue(app: Conveyor) -> None:
    register(app)
    a = await app.enqueue("ok", 1)
    b = await app.enqueue("other", 1)
    c = await app.enqueue("other", 2, delay=3600)
    await app.cancel(a.id)
    await app.cancel(b.id)
    assert await app.purge([JobState.CANCELLED, JobState.SCHEDULED], queue="other") == 2
    assert await app.get_job(b.id) is None
    assert await app.get_job(c.id) is None
    assert (await app.get_job(a.id)).state is JobState.CANCELLED


async def test_running_jobs_are_never_purged(app: Conveyor, worker) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.job("hold", timeout=None)
    async def hold(payload: Any) -> str:
        started.set()
        await release.wait()
        return "survived"

    job = await app.enqueue("hold", {})
    async with worker(app):
        await wait_event(started)
        with pytest.raises(InvalidOptionError, match="running"):
            await app.purge(JobState.RUNNING)
        non_running = [s for s in JobState if s is not JobState.RUNNING]
        assert await app.purge(non_running) == 0
        # even straight through the backend protocol
        assert await app.backend.purge([JobState.RUNNING], None, None) == 0
        assert (await app.get_job(job.id)).state is JobState.RUNNING
        release.set()
        done = await app.wait(job.id, timeout=WAIT)
    assert done.result == "survived"


async def test_retry_a_failed_job_gives_one_more_attempt(app: Conveyor, worker) -> None:
    calls: list[int] = []
    succeed = False

    @app.job("flaky", retries=1, backoff=0.01)
    async def flaky(payload: Any, ctx) -> str:
        calls.append(ctx.attempt)
        if not succeed:
            raise RuntimeError(f"no {ctx.attempt}")
        return "finally"

    job = await app.enqueue("flaky", {})
    async with worker(app):
        failed = await app.wait(job.id, timeout=WAIT)
        assert failed.state is JobState.FAILED
        assert failed.attempts == 2

        # one more attempt, which fails again: failed for good after it
        again = await app.retry(job.id)
        assert again is not None
        assert again.state is JobState.QUEUED
        refailed = await app.wait(job.id, timeout=WAIT)
        assert refailed.state is JobState.FAILED
        assert refailed.attempts == 3
        assert "no 3" in refailed.error

        succeed = True
        await app.retry(job.id)
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == "finally"
    assert done.attempts == 4
    assert calls == [1, 2, 3, 4]


async def test_retry_a_cancelled_job(app: Conveyor, worker) -> None:
    register(app)
    job = await app.enqueue("ok", "back")
    await app.cancel(job.id)
    retried = await app.retry(job.id)
    assert retried.state is JobState.QUEUED
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == "back"


async def test_retry_refuses_jobs_that_are_not_failed_or_cancelled(app: Conveyor, worker) -> None:
    register(app)
    assert await app.retry("no-such-job") is None
    queued = await app.enqueue("other", {})
    assert await app.retry(queued.id) is None
    scheduled = await app.enqueue("ok", {}, delay=3600)
    assert await app.retry(scheduled.id) is None
    done = await app.enqueue("ok", {})
    async with worker(app, queues=["default"]):
        await app.wait(done.id, timeout=WAIT)
    assert await app.retry(done.id) is None
    assert (await app.get_job(done.id)).state is JobState.COMPLETED
    assert (await app.get_job(scheduled.id)).state is JobState.SCHEDULED


async def test_retry_of_a_job_failed_by_stalls(app: Conveyor, worker) -> None:
    register(app)
    job = await app.enqueue("ok", "stalled")
    t = time.time()
    await app.backend.claim(["default"], 1, 0.5, t)
    (dead,) = await app.backend.recover_expired(t + 1, 0)
    assert dead.state is JobState.FAILED
    assert (await app.retry(job.id)).state is JobState.QUEUED
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == "stalled"


async def test_retry_of_a_permanently_failed_job_is_one_more_attempt(app: Conveyor, worker) -> None:
    from conveyor import Permanent

    calls: list[int] = []

    @app.job("picky", retries=3, backoff=0.01)
    async def picky(payload: Any, ctx) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Permanent("bad input")
        raise RuntimeError("still broken")

    job = await app.enqueue("picky", {})
    async with worker(app):
        assert (await app.wait(job.id, timeout=WAIT)).attempts == 1
        await app.retry(job.id)
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert calls == [1, 2]
    assert done.attempts == 2
