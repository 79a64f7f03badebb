"""Delayed jobs: `delay=` (seconds or timedelta) and `run_at=` (aware datetime).
A delayed job is `scheduled`, does not run before its time, and runs after."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from conveyor import Conveyor, JobState

from .conftest import needs
from .helpers import WAIT

pytestmark = needs("lookup")


def timing_app(app: Conveyor) -> dict[str, float]:
    ran_at: dict[str, float] = {}

    @app.job("stamp")
    async def stamp(payload: Any, ctx) -> None:
        ran_at[ctx.job_id] = time.time()

    return ran_at


async def test_delay_schedules_then_runs_after_its_time(app: Conveyor, worker) -> None:
    ran_at = timing_app(app)
    before = time.time()
    job = await app.enqueue("stamp", {}, delay=0.4)
    assert job.state is JobState.SCHEDULED
    assert job.run_at is not None
    assert before + 0.4 <= job.run_at.timestamp() <= time.time() + 0.4 + 0.01
    stored = await app.get_job(job.id)
    assert stored.state is JobState.SCHEDULED

    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert ran_at[job.id] >= job.run_at.timestamp()
    assert done.started_at is not None
    assert done.started_at >= job.run_at - timedelta(milliseconds=1)


async def test_delay_as_timedelta(app: Conveyor) -> None:
    timing_app(app)
    before = time.time()
    job = await app.enqueue("stamp", {}, delay=timedelta(minutes=5))
    assert job.state is JobState.SCHEDULED
    assert job.run_at.timestamp() >= before + 300


async def test_run_at_schedules_then_runs_after_its_time(app: Conveyor, worker) -> None:
    ran_at = timing_app(app)
    when = datetime.now(UTC) + timedelta(seconds=0.4)
    job = await app.enqueue("stamp", {}, run_at=when)
    assert job.state is JobState.SCHEDULED
    assert abs(job.run_at.timestamp() - when.timestamp()) < 0.001

    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert ran_at[job.id] >= when.timestamp()


async def test_run_at_in_another_time_zone(app: Conveyor) -> None:
    timing_app(app)
    when = datetime.now(timezone(timedelta(hours=-5))) + timedelta(hours=1)
    job = await app.enqueue("stamp", {}, run_at=when)
    assert job.state is JobState.SCHEDULED
    assert abs(job.run_at.timestamp() - when.timestamp()) < 0.001


async def test_run_at_in_the_past_is_queued_at_once(app: Conveyor) -> None:
    timing_app(app)
    job = await app.enqueue("stamp", {}, run_at=datetime.now(UTC) - timedelta(minutes=1))
    assert job.state is JobState.QUEUED


async def test_zero_delay_is_queued(app: Conveyor) -> None:
    timing_app(app)
    job = await app.enqueue("stamp", {}, delay=0)
    assert job.state is JobState.QUEUED


async def test_a_job_not_yet_due_does_not_run(app: Conveyor, worker) -> None:
    ran_at = timing_app(app)
    later = await app.enqueue("stamp", {}, delay=3600)
    at_time = await app.enqueue("stamp", {}, run_at=datetime.now(UTC) + timedelta(hours=1))
    now = await app.enqueue("stamp", {})
    async with worker(app):
        await app.wait(now.id, timeout=WAIT)
        # Let the worker claim a few more times: nothing else is due.
        more = await app.enqueue("stamp", {})
        await app.wait(more.id, timeout=WAIT)
    assert set(ran_at) == {now.id, more.id}
    for job in (later, at_time):
        stored = await app.get_job(job.id)
        assert stored.state is JobState.SCHEDULED
        assert stored.attempts == 0


async def test_delayed_jobs_run_in_due_order(app: Conveyor, worker) -> None:
    ran: list[str] = []

    @app.job("rec")
    async def rec(payload: str) -> None:
        ran.append(payload)

    second = await app.enqueue("rec", "second", delay=0.4)
    first = await app.enqueue("rec", "first", delay=0.2)
    async with worker(app, concurrency=1):
        await app.wait(second.id, timeout=WAIT)
        await app.wait(first.id, timeout=WAIT)
    assert ran == ["first", "second"]


async def test_scheduled_counts_in_stats_and_list(app: Conveyor) -> None:
    timing_app(app)
    job = await app.enqueue("stamp", {}, delay=60)
    stats = await app.stats()
    assert stats["default"]["scheduled"] == 1
    assert stats["default"]["queued"] == 0
    listed = await app.list_jobs(state=JobState.SCHEDULED)
    assert [j.id for j in listed] == [job.id]
