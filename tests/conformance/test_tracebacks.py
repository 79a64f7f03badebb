"""Tracebacks and attempt history (issue 8, point 1).

A failed attempt keeps its formatted traceback on the job (bounded in size),
events carry it, and every attempt leaves an entry in `Job.history`: its
number, start, end, outcome and error, whether the worker reported it
(completed, failed, retrying, timed out, cancelled, handed back) or the
backend found it (stalled: the lease expired).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from conveyor import Backoff, Conveyor, JobState
from conveyor.backends.base import Outcome, OutcomeKind, Retention

from .conftest import needs
from .helpers import WAIT, wait_state

pytestmark = needs("lookup")

Q = ["default"]
KEEP_ALL = Retention(keep_completed=None, keep_failed=None)
# What the worker keeps of one traceback, with room for its cut note.
TRACEBACK_LIMIT = 8192


def compute_ratio(total: int, count: int) -> float:
    return total / count


def first_attempt_fails(n: int) -> float:
    return compute_ratio(n, 0)


def second_attempt_fails(n: int) -> None:
    raise ValueError(f"still wrong after {n} tries")


def outcomes_of(job: Any) -> list[str]:
    return [entry["outcome"] for entry in job.history]


async def test_a_retried_and_a_final_failure_keep_their_tracebacks(app: Conveyor, worker) -> None:
    @app.job("ratio", retries=1, backoff=Backoff.fixed(0.05))
    async def ratio(payload: Any, ctx) -> None:
        if ctx.attempt == 1:
            first_attempt_fails(1)
        second_attempt_fails(ctx.attempt)

    retrying: list[Any] = []
    failed: list[Any] = []
    app.on("job.retrying", lambda event: retrying.append(event.job))
    app.on("job.failed", lambda event: failed.append(event.job))
    job = await app.enqueue("ratio", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    # The last failure's traceback, down to the line that raised.
    assert done.traceback is not None
    assert done.traceback.startswith("Traceback (most recent call last):")
    assert "second_attempt_fails" in done.traceback
    assert "ValueError: still wrong after 2 tries" in done.traceback
    # The events carry the traceback of the attempt they report.
    (retry_view,) = retrying
    assert retry_view.traceback is not None
    assert "compute_ratio" in retry_view.traceback
    assert "ZeroDivisionError: division by zero" in retry_view.traceback
    (failed_view,) = failed
    assert failed_view.traceback == done.traceback
    # ... and the history up to that attempt.
    assert outcomes_of(retry_view) == ["retrying"]
    assert outcomes_of(failed_view) == ["retrying", "failed"]
    assert failed_view.history[-1]["error"] == "ValueError: still wrong after 2 tries"
    # One entry per attempt, oldest first.
    assert outcomes_of(done) == ["retrying", "failed"]
    first, second = done.history
    assert first["attempt"] == 1 and second["attempt"] == 2
    assert first["error"] == "ZeroDivisionError: division by zero"
    assert second["error"] == "ValueError: still wrong after 2 tries"
    for entry in done.history:
        assert entry["started_at"] is not None
        assert entry["finished_at"] is not None
        assert entry["started_at"] <= entry["finished_at"]
    assert first["finished_at"] <= second["started_at"]
    as_dict = done.to_dict()
    assert as_dict["traceback"] == done.traceback
    assert [e["outcome"] for e in as_dict["history"]] == ["retrying", "failed"]
    assert isinstance(as_dict["history"][0]["started_at"], str)


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "blocking"])
async def test_the_traceback_starts_at_the_handler(app: Conveyor, worker, blocking: bool) -> None:
    """The frames that call a handler (the worker's, the thread pool's) are
    left out: the first frame is the handler's own."""
    if blocking:

        @app.job("ratio", retries=0)
        def ratio(payload: Any) -> float:
            return first_attempt_fails(1)

    else:

        @app.job("ratio", retries=0)
        async def ratio(payload: Any) -> float:
            return first_attempt_fails(1)

    job = await app.enqueue("ratio", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.traceback is not None
    lines = done.traceback.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].endswith(", in ratio"), lines[1]
    assert "compute_ratio" in done.traceback


async def test_the_traceback_is_stored_while_the_retry_waits(app: Conveyor, worker) -> None:
    @app.job("ratio", retries=3, backoff=Backoff.fixed(3600))
    async def ratio(payload: Any) -> float:
        return first_attempt_fails(1)

    job = await app.enqueue("ratio", {})
    async with worker(app):
        waiting = await wait_state(app, job.id, JobState.SCHEDULED)
    assert waiting.traceback is not None
    assert "compute_ratio" in waiting.traceback
    assert waiting.error == "ZeroDivisionError: division by zero"
    assert outcomes_of(waiting) == ["retrying"]


async def test_a_success_after_a_failure_lists_both_attempts(app: Conveyor, worker) -> None:
    @app.job("ratio", retries=1, backoff=Backoff.fixed(0.01))
    async def ratio(payload: Any, ctx) -> str:
        if ctx.attempt == 1:
            first_attempt_fails(1)
        return "ok"

    job = await app.enqueue("ratio", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert outcomes_of(done) == ["retrying", "completed"]
    assert done.history[1]["error"] is None
    # Like `error`, the traceback describes the job's current failure: none.
    assert done.traceback is None


async def test_a_timed_out_attempt_is_recorded_as_such(app: Conveyor, worker) -> None:
    @app.job("slow", retries=0, timeout=0.1)
    async def slow(payload: Any) -> None:
        await asyncio.sleep(30)

    job = await app.enqueue("slow", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert outcomes_of(done) == ["timed out"]
    assert "timed out" in (done.history[0]["error"] or "")


def alternate_a(depth: int) -> None:
    if depth == 0:
        raise RuntimeError("bottom of the recursion")
    alternate_b(depth - 1)


def alternate_b(depth: int) -> None:
    alternate_a(depth - 1)


async def test_a_huge_traceback_is_cut_at_a_frame_boundary(app: Conveyor, worker, caplog) -> None:
    # Two functions calling each other: no frame repeats the one before, so
    # Python's own "[Previous line repeated]" folding does not shorten it.
    @app.job("deep", retries=0)
    async def deep(payload: Any) -> None:
        alternate_a(400)

    job = await app.enqueue("deep", {})
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        async with worker(app):
            done = await app.wait(job.id, timeout=WAIT)
    tb = done.traceback
    assert tb is not None
    assert len(tb.encode()) <= TRACEBACK_LIMIT
    assert tb.startswith("Traceback (most recent call last):\n")
    assert "earlier frame" in tb  # the note saying what was cut
    assert tb.rstrip().endswith("RuntimeError: bottom of the recursion")
    # Cut between frames: every kept frame line comes with its source line.
    body = tb.split("\n")
    frames = [i for i, line in enumerate(body) if line.startswith('  File "')]
    assert frames
    assert all(body[i + 1].startswith("    ") for i in frames)
    # The worker logs it, once for the attempt.
    logged = [r for r in caplog.records if job.id in r.getMessage()]
    assert any("RuntimeError: bottom of the recursion" in r.getMessage() for r in logged)
    assert any(r.levelno == logging.ERROR and "alternate_a" in r.getMessage() for r in logged)


async def test_a_retry_logs_its_traceback_at_warning(app: Conveyor, worker, caplog) -> None:
    @app.job("ratio", retries=1, backoff=Backoff.fixed(3600))
    async def ratio(payload: Any) -> float:
        return first_attempt_fails(1)

    job = await app.enqueue("ratio", {})
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        async with worker(app):
            await wait_state(app, job.id, JobState.SCHEDULED)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and job.id in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "compute_ratio" in warnings[0].getMessage()


def outcome(job: Any, kind: OutcomeKind, at: float, **fields: Any) -> Outcome:
    assert job.token is not None
    return Outcome(job.id, job.token, kind, at, **fields)


async def register_and_enqueue(app: Conveyor, key: str | None = None) -> str:
    @app.job("work", retries=50)
    async def work(payload: Any) -> None:
        return None

    return (await app.enqueue("work", {}, key=key)).id


@needs("driven_clock")
async def test_history_lists_every_attempt_with_its_outcome(app: Conveyor) -> None:
    """Driven through the backend with explicit times: a stall (lease
    expired, found by recover_expired), a hand-back, a timeout, a retry, a
    lost claim reply (unclaim) and a completion, in that order."""
    job_id = await register_and_enqueue(app)
    backend = app.backend
    t0 = time.time()

    (run,) = await backend.claim(Q, 1, 1.0, t0)
    (stalled,) = await backend.recover_expired(t0 + 2.0, 5)
    assert outcomes_of(stalled) == ["stalled"]

    (run,) = await backend.claim(Q, 1, 30.0, t0 + 3)
    assert outcomes_of(run) == ["stalled"]  # a claim's record carries the history too
    assert await backend.finish([outcome(run, OutcomeKind.QUEUED, t0 + 4)], KEEP_ALL) == [True]

    (run,) = await backend.claim(Q, 1, 30.0, t0 + 5)
    assert run.attempts == 2  # the hand-back did not count
    timed_out = outcome(
        run,
        OutcomeKind.SCHEDULED,
        t0 + 6,
        error="TimeoutError: timed out after 1 s",
        traceback="Traceback (most recent call last):\n  timed out\n",
        run_at=t0 + 6,
        timed_out=True,
    )
    assert await backend.finish([timed_out], KEEP_ALL) == [True]

    (run,) = await backend.claim(Q, 1, 30.0, t0 + 7)
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nKeyError: 'ü'\n"
    retry = outcome(
        run, OutcomeKind.SCHEDULED, t0 + 8, error="KeyError: 'ü'", traceback=tb, run_at=t0 + 8
    )
    assert await backend.finish([retry], KEEP_ALL) == [True]
    assert (await app.get_job(job_id)).traceback == tb

    claim_id = "lost-reply"
    await backend.claim(Q, 1, 30.0, t0 + 9, claim_id=claim_id)
    assert await backend.unclaim(claim_id, t0 + 10) == 1

    (run,) = await backend.claim(Q, 1, 30.0, t0 + 11)
    done = outcome(run, OutcomeKind.COMPLETED, t0 + 12, result='"ok"')
    assert await backend.finish([done], KEEP_ALL) == [True]

    job = await app.get_job(job_id)
    assert job is not None and job.state is JobState.COMPLETED
    assert outcomes_of(job) == [
        "stalled",
        "handed back",
        "timed out",
        "retrying",
        "handed back",
        "completed",
    ]
    assert [e["attempt"] for e in job.history] == [1, 2, 2, 3, 4, 4]
    starts = [e["started_at"].timestamp() for e in job.history]
    ends = [e["finished_at"].timestamp() for e in job.history]
    assert starts == pytest.approx([t0, t0 + 3, t0 + 5, t0 + 7, t0 + 9, t0 + 11], abs=0.01)
    assert ends == pytest.approx([t0 + 2, t0 + 4, t0 + 6, t0 + 8, t0 + 10, t0 + 12], abs=0.01)
    errors = [e["error"] for e in job.history]
    assert "lease expired" in errors[0]
    assert errors[1:] == [None, "TimeoutError: timed out after 1 s", "KeyError: 'ü'", None, None]


async def test_a_cancel_ending_an_attempt_is_recorded(app: Conveyor) -> None:
    job_id = await register_and_enqueue(app)
    backend = app.backend
    t0 = time.time()
    (run,) = await backend.claim(Q, 1, 30.0, t0)
    await app.cancel(job_id)
    # Handed back after the cancel was requested: the job ends cancelled.
    assert await backend.finish([outcome(run, OutcomeKind.QUEUED, t0 + 1)], KEEP_ALL) == [True]
    job = await app.get_job(job_id)
    assert job is not None and job.state is JobState.CANCELLED
    assert outcomes_of(job) == ["cancelled"]


@needs("driven_clock")
async def test_the_history_keeps_the_last_20_attempts(app: Conveyor) -> None:
    job_id = await register_and_enqueue(app)
    backend = app.backend
    t0 = time.time()
    # Errors that look like the stored form must not confuse the trimming.
    tricky = 'ValueError: },{"attempt":1,"x":"\n\\ "'
    for i in range(25):
        (run,) = await backend.claim(Q, 1, 30.0, t0 + i)
        retry = outcome(
            run, OutcomeKind.SCHEDULED, t0 + i + 0.5, error=f"{tricky} {i}", run_at=t0 + i + 0.5
        )
        assert await backend.finish([retry], KEEP_ALL) == [True]
    job = await app.get_job(job_id)
    assert job is not None
    assert len(job.history) == 20
    assert [e["attempt"] for e in job.history] == list(range(6, 26))
    assert [e["error"] for e in job.history] == [f"{tricky} {i}" for i in range(5, 25)]
    # The same through a listing.
    (listed,) = await app.list_jobs()
    assert listed.history == job.history
