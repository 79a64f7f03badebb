"""Retention: the newest `keep_completed` completed jobs per queue are kept
(default 1,000); failed jobs until purged unless `keep_failed` is set."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.base import Outcome, OutcomeKind, Retention

from .conftest import needs
from .helpers import eventually

pytestmark = needs("lookup")


def register(app: Conveyor) -> list[Any]:
    done: list[Any] = []

    @app.job("ok")
    async def ok(payload: Any) -> Any:
        return payload

    @app.job("bad", retries=0)
    async def bad(payload: Any) -> None:
        raise RuntimeError(f"bad {payload}")

    app.on("job.completed", lambda event: done.append(event.job.id))
    app.on("job.failed", lambda event: done.append(event.job.id))
    return done


async def run_all(app: Conveyor, worker, jobs: list[Any], done: list[Any]) -> None:
    """Run jobs one at a time, in order, until each reported its outcome (wait()
    cannot be used: retention may delete a job before we look at it)."""
    async with worker(app, concurrency=1):
        await eventually(lambda: len(done) >= len(jobs), message="all jobs to finish")


async def test_keep_completed_keeps_exactly_the_newest(make_app, worker) -> None:
    app = await make_app(keep_completed=5)
    done = register(app)
    jobs = [await app.enqueue("ok", i) for i in range(12)]
    await run_all(app, worker, jobs, done)
    kept = await app.list_jobs(state=JobState.COMPLETED, limit=100)
    assert sorted(j.payload for j in kept) == list(range(7, 12))
    assert (await app.stats())["default"]["completed"] == 5
    for job in jobs[:7]:
        assert await app.get_job(job.id) is None
    for job in jobs[7:]:
        assert (await app.get_job(job.id)).state is JobState.COMPLETED


async def test_keep_completed_is_per_queue(make_app, worker) -> None:
    app = await make_app(keep_completed=2)
    done = register(app)
    jobs = [await app.enqueue("ok", f"a{i}", queue="a") for i in range(4)]
    jobs += [await app.enqueue("ok", f"b{i}", queue="b") for i in range(3)]
    async with worker(app, concurrency=1, queues=["a", "b"]):
        await eventually(lambda: len(done) >= len(jobs))
    stats = await app.stats()
    assert stats["a"]["completed"] == 2
    assert stats["b"]["completed"] == 2
    kept = {j.payload for j in await app.list_jobs(state=JobState.COMPLETED)}
    assert kept == {"a2", "a3", "b1", "b2"}


async def test_failed_jobs_are_kept_by_default(make_app, worker) -> None:
    app = await make_app(keep_completed=1)
    done = register(app)
    jobs = [await app.enqueue("bad", i) for i in range(4)]
    jobs += [await app.enqueue("ok", i) for i in range(3)]
    await run_all(app, worker, jobs, done)
    stats = (await app.stats())["default"]
    assert stats["failed"] == 4
    assert stats["completed"] == 1
    failed = await app.list_jobs(state=JobState.FAILED)
    assert sorted(j.payload for j in failed) == [0, 1, 2, 3]


async def test_keep_failed_trims_failed_jobs(make_app, worker) -> None:
    app = await make_app(keep_failed=2)
    done = register(app)
    jobs = [await app.enqueue("bad", i) for i in range(5)]
    await run_all(app, worker, jobs, done)
    failed = await app.list_jobs(state=JobState.FAILED)
    assert sorted(j.payload for j in failed) == [3, 4]


async def test_keep_completed_zero_keeps_none(make_app, worker) -> None:
    app = await make_app(keep_completed=0)
    done = register(app)
    jobs = [await app.enqueue("ok", i) for i in range(3)]
    await run_all(app, worker, jobs, done)
    assert (await app.stats()).get("default", {}).get("completed", 0) == 0


async def test_keep_completed_none_keeps_all(make_app, worker) -> None:
    app = await make_app(keep_completed=None)
    done = register(app)
    jobs = [await app.enqueue("ok", i) for i in range(6)]
    await run_all(app, worker, jobs, done)
    assert (await app.stats())["default"]["completed"] == 6


async def test_default_keeps_1000_completed(app: Conveyor) -> None:
    assert app.retention.keep_completed == 1000
    assert app.retention.keep_failed is None


@pytest.mark.parametrize("option", ["keep_completed", "keep_failed"])
async def test_bad_retention_option_is_refused(backend_url: str, option: str) -> None:
    from conveyor import InvalidOptionError

    with pytest.raises(InvalidOptionError, match=option):
        Conveyor(backend_url, **{option: -1})


async def test_keep_failed_counts_a_job_failed_twice_once(app: Conveyor) -> None:
    """keep_failed=2; A fails, is retried, B fails, A fails again: A and B are
    the 2 newest failed jobs and both stay."""
    register(app)
    backend = app.backend
    keep = Retention(keep_completed=None, keep_failed=2)
    a = await app.enqueue("bad", "a")
    b = await app.enqueue("bad", "b")
    t = time.time()

    async def claim_and_fail(job_id: str) -> None:
        nonlocal t
        (claimed,) = await backend.claim(["default"], 1, 10.0, t)
        assert claimed.id == job_id
        out = Outcome(job_id, claimed.token, OutcomeKind.FAILED, t, error="E")
        assert await backend.finish([out], keep) == [True]
        t += 0.01

    await claim_and_fail(a.id)  # b is still queued behind a
    assert await backend.retry(a.id, t) is not None
    # the retried a is queued after b now (its run_at is later)
    await claim_and_fail(b.id)
    await claim_and_fail(a.id)
    failed = await app.list_jobs(state=JobState.FAILED)
    assert sorted(j.payload for j in failed) == ["a", "b"]


@needs("concurrent_claims")
async def test_a_retried_job_no_longer_counts_toward_keep_failed(app: Conveyor) -> None:
    """keep_failed=2; A and B fail, B is retried (queued again), C fails: the
    failed set is {A, C}, the 2 newest failed jobs; A must not be trimmed."""
    register(app)
    backend = app.backend
    keep = Retention(keep_completed=None, keep_failed=2)
    jobs = {p: await app.enqueue("bad", p) for p in "abc"}
    t = time.time()
    claimed = await backend.claim(["default"], 3, 10.0, t)
    assert [j.payload for j in claimed] == ["a", "b", "c"]
    tokens = {j.payload: j.token for j in claimed}
    for p in "ab":
        out = Outcome(jobs[p].id, tokens[p], OutcomeKind.FAILED, t + 0.01, error="E")
        assert await backend.finish([out], keep) == [True]
    assert await backend.retry(jobs["b"].id, t + 0.02) is not None
    out = Outcome(jobs["c"].id, tokens["c"], OutcomeKind.FAILED, t + 0.03, error="E")
    assert await backend.finish([out], keep) == [True]
    failed = await app.list_jobs(state=JobState.FAILED)
    assert sorted(j.payload for j in failed) == ["a", "c"]
    assert (await app.get_job(jobs["b"].id)).state is JobState.QUEUED


@needs("driven_clock")
async def test_keep_failed_also_trims_jobs_failed_by_stalls(app: Conveyor) -> None:
    """A job failed by lease expiry is a failed job like any other: with
    keep_failed=1, the next failure trims it."""
    register(app)
    backend = app.backend
    keep = Retention(keep_completed=None, keep_failed=1)
    stalled = await app.enqueue("bad", "stalled")
    later = await app.enqueue("bad", "later")
    t = time.time()
    await backend.claim(["default"], 1, 1.0, t)
    (dead,) = await backend.recover_expired(t + 2, 0)
    assert dead.id == stalled.id and dead.state is JobState.FAILED
    (claimed,) = await backend.claim(["default"], 1, 10.0, t + 3)
    assert claimed.id == later.id
    out = Outcome(later.id, claimed.token, OutcomeKind.FAILED, t + 4, error="E")
    assert await backend.finish([out], keep) == [True]
    failed = await app.list_jobs(state=JobState.FAILED)
    assert [j.payload for j in failed] == ["later"]
