"""A schedule fires from its stored record, whichever scheduler fires it.

`app.recurring(...)` resolves every option the job needs (queue, priority,
retries, timeout) against the registered job type and stores them in the
schedule's record; a scheduler builds each tick's job from that record alone,
so a worker that does not register the job type fires the tick as well as one
that does (issue 7, point 3).

Records written before the options were stored in full (only the options
given explicitly) take the job type's defaults for what is missing; a
scheduler that does not know the type leaves such a tick due for one that
does, rather than guess the defaults or lose the tick.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from conveyor import Conveyor, Event, Job, JobState
from conveyor.backends.stores import ScheduleStore
from conveyor.scheduler import InvalidScheduleError

from .conftest import Peer, fast_worker, needs
from .helpers import a_priority, eventually, wait_state

pytestmark = needs("lookup")

T0 = 1_767_614_400.0  # 2026-01-05 12:00:00 UTC: ticks at a fixed past instant
JOB = "report.build"


def store(app: Conveyor) -> ScheduleStore:
    backend = app.backend
    assert isinstance(backend, ScheduleStore)
    return backend


async def move_next_run(app: Conveyor, name: str, when: float) -> None:
    rec = await store(app).schedule_get(name)
    assert rec is not None
    rec.next_run = when
    await store(app).schedule_put(rec)


async def jobs_of(app: Conveyor) -> list[Job]:
    return await app.list_jobs(name=JOB, limit=1000)


def options_of(job: Job) -> tuple[str, int, int, float | None]:
    return (job.queue, job.priority, job.max_retries, job.timeout)


async def test_a_scheduler_without_the_job_type_fires_each_tick_with_the_stored_options(
    app: Conveyor, peer: Peer
) -> None:
    runs: list[Any] = []

    @app.job(JOB, retries=1, timeout=30, queue="default")
    async def build(payload: Any) -> None:
        runs.append(payload)

    await app.recurring(
        "reports",
        JOB,
        {"kind": "full"},
        every=0.25,
        queue="reports",
        priority=a_priority(app, -7),
        retries=5,
        timeout=4.5,
    )
    other = await peer()
    assert JOB not in other.registry
    ticks: list[Event] = []
    other.on("scheduler.tick", ticks.append)

    # Only the scheduler of the app without the job type runs.
    stopping = asyncio.Event()
    scheduler = asyncio.create_task(other.scheduler(interval=0.05).run(stopping))
    try:
        await eventually(
            lambda: sum(len(e.data["jobs"]) for e in ticks) >= 3, message="three fired ticks"
        )
    finally:
        stopping.set()
        await scheduler

    assert [e.data["error"] for e in ticks] == [None] * len(ticks)
    jobs = await jobs_of(app)
    assert len(jobs) == sum(len(e.data["jobs"]) for e in ticks) >= 3
    assert {options_of(job) for job in jobs} == {("reports", a_priority(app, -7), 5, 4.5)}
    assert all(job.payload == {"kind": "full"} for job in jobs)
    assert len({job.key for job in jobs}) == len(jobs)  # one job per tick
    shown = await app.get_recurring("reports")
    assert shown is not None and shown.last_error is None and shown.last_run is not None

    # The app that has the handler runs them (its own scheduler stays off).
    async with fast_worker(app, queues=["reports"], scheduler=False):
        for job in jobs:
            await wait_state(app, job.id, JobState.COMPLETED)
    assert runs == [{"kind": "full"}] * len(jobs)


async def test_options_left_out_are_the_job_types_defaults_when_the_schedule_is_made(
    app: Conveyor, peer: Peer
) -> None:
    app.job(JOB, retries=2, priority=3, queue="low", timeout=9)(lambda payload: None)
    app.job("no.timeout", timeout=None, retries=0)(lambda payload: None)
    await app.recurring("defaults", JOB, None, every=60)
    await app.recurring("untimed", "no.timeout", [1], every=60, priority=4)
    for name in ("defaults", "untimed"):
        await move_next_run(app, name, T0)

    other = await peer()
    assert await other.scheduler().tick(now=T0 + 1) == 2

    (job,) = await jobs_of(app)
    assert options_of(job) == ("low", 3, 2, 9.0)
    assert job.payload is None
    (untimed,) = await app.list_jobs(name="no.timeout")
    assert options_of(untimed) == ("default", 4, 0, None)
    assert untimed.payload == [1]


async def test_the_stored_record_holds_every_option(app: Conveyor) -> None:
    app.job(JOB, retries=2, priority=3, queue="low", timeout=None)(lambda payload: None)
    await app.recurring("s", JOB, {}, every=60, retries=6)
    rec = await store(app).schedule_get("s")
    assert rec is not None
    assert json.loads(rec.options) == {"queue": "low", "priority": 3, "retries": 6, "timeout": None}


# ------------------------------------------------------------------- records of older versions


async def put_legacy_record(app: Conveyor, name: str, options: dict[str, Any]) -> None:
    """Rewrite the schedule's options as conveyor stored them before they were
    stored in full: only those given to `recurring()` explicitly."""
    rec = await store(app).schedule_get(name)
    assert rec is not None
    rec.options = json.dumps(options)
    rec.next_run = T0
    await store(app).schedule_put(rec)


async def test_a_legacy_record_takes_the_missing_options_from_the_local_job_type(
    app: Conveyor,
) -> None:
    app.job(JOB, retries=2, priority=3, queue="low", timeout=9)(lambda payload: None)
    await app.recurring("old", JOB, {"n": 1}, every=60)
    await put_legacy_record(app, "old", {"priority": a_priority(app, -1)})
    assert await app.scheduler().tick(now=T0 + 1) == 1
    (job,) = await jobs_of(app)
    assert options_of(job) == ("low", a_priority(app, -1), 2, 9.0)


async def test_a_legacy_record_is_left_due_for_a_scheduler_that_knows_the_job_type(
    app: Conveyor, peer: Peer
) -> None:
    app.job(JOB, retries=2, priority=3, queue="low", timeout=9)(lambda payload: None)
    await app.recurring("old", JOB, {"n": 1}, every=60)
    await put_legacy_record(app, "old", {"queue": "reports"})
    other = await peer()
    events: list[Event] = []
    other.on("scheduler.tick", events.append)

    # Without the type it cannot know the missing defaults: the tick stays due.
    assert await other.scheduler().tick(now=T0 + 1) == 0
    assert await jobs_of(app) == []
    assert events == []
    rec = await store(app).schedule_get("old")
    assert rec is not None
    assert (rec.next_run, rec.last_run, rec.last_error) == (T0, None, None)

    # One that knows the type fires that very tick.
    assert await app.scheduler().tick(now=T0 + 2) == 1
    (job,) = await jobs_of(app)
    assert options_of(job) == ("reports", 3, 2, 9.0)
    assert job.key == f"recurring:old:{T0:.3f}"


# ------------------------------------------------------------------- run now


async def test_run_recurring_enqueues_one_job_from_the_record_now(
    app: Conveyor, peer: Peer
) -> None:
    app.job(JOB, retries=2, priority=3, queue="low", timeout=9)(lambda payload: None)
    await app.recurring("now", JOB, {"n": 5}, every=3600)
    before = await store(app).schedule_get("now")
    assert before is not None
    # A peer without the job type runs it from the stored options, as a tick would.
    other = await peer()
    job = await other.run_recurring("now")
    assert job is not None and job.payload == {"n": 5} and job.state is JobState.QUEUED
    assert options_of(job) == ("low", 3, 2, 9.0)
    after = await store(app).schedule_get("now")
    assert after is not None and after.next_run == before.next_run  # its timing untouched
    assert await other.run_recurring("missing") is None
    # A legacy record without its options cannot be run by an app without the type.
    await put_legacy_record(app, "now", {})
    with pytest.raises(InvalidScheduleError, match="recurring\\(\\) again"):
        await other.run_recurring("now")
    assert [j.id for j in await jobs_of(app)] == [job.id]
