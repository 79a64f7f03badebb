"""Retries with backoff, exhausted retries (the dead-letter `failed` state) and
`Permanent` failures (DESIGN section 2, "Retries")."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from conveyor import Backoff, Conveyor, JobState, Permanent, PermanentError

from .conftest import needs
from .helpers import WAIT, wait_state

pytestmark = needs("lookup")


class Flaky(Exception):
    pass


def flaky_app(app: Conveyor, fail_times: int, **options: Any) -> list[float]:
    """A job type failing its first `fail_times` attempts; returns attempt times."""
    calls: list[float] = []

    @app.job("flaky", **options)
    async def flaky(payload: Any, ctx) -> dict[str, int]:
        calls.append(time.monotonic())
        assert ctx.attempt == len(calls)
        if ctx.attempt <= fail_times:
            raise Flaky(f"boom on attempt {ctx.attempt}")
        return {"attempt": ctx.attempt}

    return calls


async def test_failing_twice_then_succeeding_completes_on_attempt_3(app: Conveyor, worker) -> None:
    calls = flaky_app(app, fail_times=2, retries=3, backoff=Backoff.fixed(0.01))
    retrying: list[Any] = []
    app.on("job.retrying", lambda event: retrying.append(event.job))
    job = await app.enqueue("flaky", {})
    assert job.max_retries == 3
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.attempts == 3
    assert done.result == {"attempt": 3}
    assert done.error is None
    assert len(calls) == 3
    assert [j.attempts for j in retrying] == [1, 2]
    assert all("boom" in j.error for j in retrying)


async def test_exhausted_retries_fail_and_keep_the_error(app: Conveyor, worker) -> None:
    calls = flaky_app(app, fail_times=99, retries=2, backoff=0.01)
    failed: list[Any] = []
    app.on("job.failed", lambda event: failed.append(event.job))
    job = await app.enqueue("flaky", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert done.attempts == 3  # the first attempt and 2 retries
    assert len(calls) == 3
    assert "Flaky" in done.error and "boom on attempt 3" in done.error
    assert done.finished_at is not None
    assert [j.id for j in failed] == [job.id]
    # kept in the dead-letter set for inspection
    assert [j.id for j in await app.list_jobs(state=JobState.FAILED)] == [job.id]


async def test_per_job_retries_override_the_type_default(app: Conveyor, worker) -> None:
    calls = flaky_app(app, fail_times=99, retries=5, backoff=0.01)
    job = await app.enqueue("flaky", {}, retries=1)
    assert job.max_retries == 1
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert done.attempts == 2
    assert len(calls) == 2


async def test_zero_retries_fails_after_one_attempt(app: Conveyor, worker) -> None:
    calls = flaky_app(app, fail_times=99, retries=0)
    job = await app.enqueue("flaky", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert len(calls) == 1


async def test_fixed_backoff_is_respected(app: Conveyor, worker) -> None:
    calls = flaky_app(app, fail_times=2, retries=3, backoff=Backoff.fixed(0.3))
    job = await app.enqueue("flaky", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(gaps) == 2
    assert all(gap >= 0.28 for gap in gaps), gaps  # lower bound only: never flaky


async def test_a_retry_waits_scheduled_with_its_backoff_run_at(app: Conveyor, worker) -> None:
    flaky_app(app, fail_times=99, retries=3, backoff=Backoff.fixed(60))
    job = await app.enqueue("flaky", {})
    async with worker(app):
        waiting = await wait_state(app, job.id, JobState.SCHEDULED)
        failed_at = time.time()
    assert waiting.attempts == 1
    assert "boom on attempt 1" in waiting.error
    delay = waiting.run_at.timestamp() - failed_at
    assert 50 < delay <= 60.5, delay
    # and it stays scheduled: not claimed again before its time
    assert (await app.get_job(job.id)).state is JobState.SCHEDULED


async def test_custom_backoff_callable_gets_the_attempt_number(app: Conveyor, worker) -> None:
    seen: list[int] = []

    def backoff(attempt: int) -> float:
        seen.append(attempt)
        return 0.01

    flaky_app(app, fail_times=2, retries=3, backoff=backoff)
    job = await app.enqueue("flaky", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert seen == [1, 2]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "soon", None, "raises"])
async def test_a_backoff_that_answers_no_delay_fails_the_job_and_nothing_else(
    app: Conveyor, worker, bad: Any
) -> None:
    """A backoff callable's bug (NaN, infinity, not a number, an exception)
    ends the job failed, saying so, instead of a retry time no backend can
    store; the worker goes on with the next jobs."""

    def backoff(attempt: int) -> Any:
        if bad == "raises":
            raise ZeroDivisionError("in the backoff")
        return bad

    @app.job("bad_backoff", retries=3, backoff=backoff)
    async def bad_backoff(payload: Any) -> None:
        raise Flaky("boom on attempt 1")

    @app.job("fine")
    async def fine(payload: Any) -> str:
        return "ran"

    job = await app.enqueue("bad_backoff", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
        after = await app.enqueue("fine", {})
        later = await app.wait(after.id, timeout=WAIT)
    assert done.state is JobState.FAILED and done.attempts == 1
    assert "boom on attempt 1" in (done.error or "") and "backoff" in (done.error or "")
    assert (later.state, later.result) == (JobState.COMPLETED, "ran")


@pytest.mark.parametrize("exc_type", [Permanent, PermanentError])
async def test_permanent_fails_at_once(app: Conveyor, worker, exc_type: type) -> None:
    calls: list[int] = []

    @app.job("doomed", retries=5, backoff=0.01)
    async def doomed(payload: Any, ctx) -> None:
        calls.append(ctx.attempt)
        raise exc_type("bad input: no such user")

    job = await app.enqueue("doomed", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert calls == [1]
    assert "bad input: no such user" in done.error


async def test_permanent_from_a_sync_handler(app: Conveyor, worker) -> None:
    @app.job("doomed_sync", retries=5, backoff=0.01)
    def doomed(payload: Any) -> None:
        raise Permanent("nope")

    job = await app.enqueue("doomed_sync", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert "nope" in done.error


async def test_sync_handler_failures_are_retried(app: Conveyor, worker) -> None:
    calls: list[int] = []

    @app.job("flaky_sync", retries=2, backoff=0.01)
    def flaky(payload: Any, ctx) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt < 2:
            raise ValueError("not yet")
        return "ok"

    job = await app.enqueue("flaky_sync", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == "ok"
    assert calls == [1, 2]


async def test_retry_does_not_block_other_jobs(app: Conveyor, worker) -> None:
    flaky_app(app, fail_times=99, retries=3, backoff=Backoff.fixed(60))
    ran: list[int] = []

    @app.job("ok")
    async def ok(payload: int) -> None:
        ran.append(payload)

    stuck = await app.enqueue("flaky", {})
    async with worker(app, concurrency=1):
        await wait_state(app, stuck.id, JobState.SCHEDULED)
        later = [await app.enqueue("ok", i) for i in range(3)]
        for job in later:
            await app.wait(job.id, timeout=WAIT)
    assert ran == [0, 1, 2]
