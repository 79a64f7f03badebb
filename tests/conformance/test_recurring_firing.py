"""Recurring schedules firing on every backend, driven by
`Scheduler.tick(now=...)` with fixed epoch times (no sleeping): one job per
tick, exactly once across schedulers, catch-up policies, events and errors,
workers, time zones across daylight-saving changes, one-off jobs delayed for
days. Ticks run at fixed times in the past (see recurring_support.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor import (
    Conveyor,
    Event,
    JobState,
)
from conveyor.backends.base import NewJob
from conveyor.backends.stores import ScheduleRecord, ScheduleStore
from conveyor.job import new_job_id
from conveyor.scheduler import Scheduler, first_run

from .conftest import Peer, needs
from .helpers import WAIT, a_priority, eventually
from .recurring_support import (
    T0,
    jobs_of,
    record_of,
    register,
    set_next_run,
    store,
    tick_of,
)

pytestmark = needs("lookup")

# --------------------------------------------------------------------------- firing


async def test_a_due_schedule_enqueues_one_job_with_its_payload_and_options(
    app: Conveyor,
) -> None:
    register(app, "report.build", retries=1, priority=9, timeout=30)
    await app.recurring(
        "nightly",
        "report.build",
        {"kind": "full", "n": [1, 2]},
        every=3600,
        queue="reports",
        priority=a_priority(app, -5),
        retries=7,
        timeout=12.5,
    )
    await set_next_run(app, "nightly", T0)
    scheduler = app.scheduler()
    assert await scheduler.tick(now=T0 - 0.001) == 0  # not due yet
    assert await scheduler.tick(now=T0 + 0.5) == 1

    (job,) = await jobs_of(app, "report.build")
    assert job.payload == {"kind": "full", "n": [1, 2]}
    assert job.queue == "reports"
    assert job.priority == a_priority(app, -5)
    assert job.max_retries == 7
    assert job.timeout == 12.5
    assert job.key == f"recurring:nightly:{T0:.3f}"
    assert job.state is JobState.QUEUED

    shown = await app.get_recurring("nightly")
    assert shown is not None
    assert shown.last_run == datetime.fromtimestamp(T0 + 0.5, UTC)
    assert shown.next_run == datetime.fromtimestamp(T0 + 3600, UTC)
    assert shown.last_error is None

    # The same moment again, by the same or another scheduler: nothing more.
    assert await scheduler.tick(now=T0 + 0.5) == 0
    assert await app.scheduler().tick(now=T0 + 0.5) == 0
    assert len(await jobs_of(app, "report.build")) == 1


async def test_a_fired_job_takes_the_job_types_defaults(app: Conveyor) -> None:
    register(app, "j", retries=2, priority=3, queue="low", timeout=9)
    await app.recurring("s", "j", None, every=60)
    await set_next_run(app, "s", T0)
    assert await app.scheduler().tick(now=T0) == 1
    (job,) = await jobs_of(app, "j")
    assert (job.queue, job.priority, job.max_retries, job.timeout) == ("low", 3, 2, 9.0)
    assert job.payload is None


async def test_successive_ticks_fire_once_each(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)
    scheduler = app.scheduler()
    for minute in range(5):
        now = T0 + minute * 60 + 1
        assert await scheduler.tick(now=now) == 1
        assert await scheduler.tick(now=now + 30) == 0
    ticks = sorted(tick_of(job) for job in await jobs_of(app, "j"))
    assert ticks == [T0 + minute * 60 for minute in range(5)]


async def test_two_schedulers_fire_a_tick_once_in_total(app: Conveyor) -> None:
    register(app, "j")
    # Only the scheduler that won a tick emits scheduler.tick; a tick fired
    # twice would show here even though the job key hides the second job.
    fired: list[Event] = []
    app.on("scheduler.tick", fired.append)
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)
    first, second = app.scheduler(), app.scheduler()
    for minute in range(10):
        now = T0 + minute * 60 + 1
        counts = await asyncio.gather(first.tick(now=now), second.tick(now=now))
        assert sum(counts) == 1, counts
        assert len(fired) == minute + 1
    assert len(await jobs_of(app, "j")) == 10


class StaleScheduler(Scheduler):
    """A scheduler that read the due schedules before another one fired them
    (the losing side of a race, made deterministic)."""

    def __init__(self, app: Conveyor, seen: list[ScheduleRecord]) -> None:
        super().__init__(app.backend, app.registry, app.events)
        self.seen = seen

    def store(self) -> ScheduleStore:
        real = super().store()
        seen = self.seen

        class Stale:
            async def schedule_due(self, now: float, limit: int) -> list[ScheduleRecord]:
                return seen

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        return Stale()  # type: ignore[return-value]


async def test_a_scheduler_that_lost_the_race_enqueues_nothing(app: Conveyor, peer: Peer) -> None:
    register(app, "j")
    events: list[Event] = []
    app.on("scheduler.tick", events.append)
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)
    now = T0 + 1
    seen = await store(app).schedule_due(now, 100)
    assert [r.name for r in seen] == ["s"]
    assert await app.scheduler().tick(now=now) == 1
    assert await StaleScheduler(app, seen).tick(now=now) == 0
    assert len(events) == 1
    other = await peer()
    register(other, "j")
    assert await StaleScheduler(other, seen).tick(now=now) == 0
    assert len(await jobs_of(app, "j")) == 1
    shown = await app.get_recurring("s")
    assert shown is not None and shown.next_run == datetime.fromtimestamp(T0 + 60, UTC)


async def test_schedule_fire_is_a_compare_and_set_on_next_run(app: Conveyor) -> None:
    """The ScheduleStore contract directly: only the caller that read the
    current next_run fires; a stale one changes nothing and stores no job."""
    register(app, "j")
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)

    def job(key: str) -> NewJob:
        return NewJob(
            id=new_job_id(),
            name="j",
            queue="default",
            payload="{}",
            priority=0,
            max_retries=0,
            timeout=None,
            key=key,
            created_at=T0,
            run_at=T0,
        )

    first = await store(app).schedule_fire("s", T0, T0 + 60, T0, None, [job("first")])
    assert first is not None and [j.key for j in first] == ["first"]
    stale = await store(app).schedule_fire(
        "s", T0, T0 + 120, T0 + 1, "should not be written", [job("stale")]
    )
    assert stale is None
    after = await record_of(app, "s")
    assert (after.next_run, after.last_run, after.last_error) == (T0 + 60, T0, None)
    assert [j.key for j in await jobs_of(app, "j")] == ["first"]


async def test_schedulers_of_two_apps_on_one_store_fire_each_tick_once(
    app: Conveyor, peer: Peer
) -> None:
    register(app, "j")
    other = await peer()
    register(other, "j")
    fired: list[Event] = []
    app.on("scheduler.tick", fired.append)
    other.on("scheduler.tick", fired.append)
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)
    schedulers = [app.scheduler(), app.scheduler(), other.scheduler(), other.scheduler()]
    for minute in range(15):
        now = T0 + minute * 60 + 1
        counts = await asyncio.gather(*(s.tick(now=now) for s in schedulers))
        assert sum(counts) == 1, counts
        assert len(fired) == minute + 1
    ticks = Counter(tick_of(job) for job in await jobs_of(app, "j"))
    assert sorted(ticks) == [T0 + minute * 60 for minute in range(15)]
    assert set(ticks.values()) == {1}


async def test_schedules_sharing_a_key_each_fire_their_own_job(app: Conveyor) -> None:
    register(app, "digest", "cleanup")
    await app.recurring("a", "digest", {"x": 1}, every=60, key="seed")
    await app.recurring("b", "cleanup", {"x": 2}, every=60, key="seed")
    for name in ("a", "b"):
        await set_next_run(app, name, T0)
    await app.scheduler().tick(now=T0 + 1)
    assert [j.payload for j in await jobs_of(app, "digest")] == [{"x": 1}]
    assert [j.payload for j in await jobs_of(app, "cleanup")] == [{"x": 2}]


# --------------------------------------------------------------------------- catch-up


async def test_catch_up_once_fires_one_job_for_many_missed_ticks(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)
    now = T0 + 10 * 60 + 5  # eleven ticks were due, the service was down
    assert await app.scheduler().tick(now=now) == 1
    (job,) = await jobs_of(app, "j")
    assert tick_of(job) == T0 + 600  # the latest missed tick
    shown = await app.get_recurring("s")
    assert shown is not None
    assert shown.next_run == datetime.fromtimestamp(T0 + 660, UTC)  # first tick after now
    assert await app.scheduler().tick(now=now + 1) == 0


async def test_catch_up_skip_fires_nothing_for_ticks_older_than_the_grace(
    app: Conveyor,
) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60, catch_up="skip", misfire_grace=10)
    await set_next_run(app, "s", T0)
    now = T0 + 5 * 60 + 30  # the latest tick is 30 s late, beyond the 10 s grace
    assert await app.scheduler().tick(now=now) == 0
    assert await jobs_of(app, "j") == []
    shown = await app.get_recurring("s")
    assert shown is not None
    assert shown.next_run == datetime.fromtimestamp(T0 + 360, UTC)
    assert shown.last_run is None
    # The next tick, on time, fires.
    assert await app.scheduler().tick(now=T0 + 360 + 2) == 1
    (job,) = await jobs_of(app, "j")
    assert tick_of(job) == T0 + 360


async def test_catch_up_skip_still_fires_a_tick_within_the_grace(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60, catch_up="skip", misfire_grace=10)
    await set_next_run(app, "s", T0)
    assert await app.scheduler().tick(now=T0 + 3 * 60 + 4) == 1
    (job,) = await jobs_of(app, "j")
    assert tick_of(job) == T0 + 180


async def test_catch_up_skip_counts_lateness_beyond_the_schedulers_pass(app: Conveyor) -> None:
    # A scheduler looks once per pass (every second by default): a tick it
    # sees within that second was not missed, whatever the grace.
    register(app, "j")
    await app.recurring("s", "j", {}, every=60, catch_up="skip", misfire_grace=0)
    await set_next_run(app, "s", T0)
    assert await app.scheduler().tick(now=T0 + 0.9) == 1
    assert await app.scheduler().tick(now=T0 + 60 + 1.5) == 0  # late past pass and grace
    assert [tick_of(job) for job in await jobs_of(app, "j")] == [T0]


async def test_catch_up_all_fires_each_missed_tick_bounded(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60, catch_up="all", max_catch_up=4)
    await set_next_run(app, "s", T0)
    now = T0 + 10 * 60 + 5
    assert await app.scheduler().tick(now=now) == 4
    ticks = sorted(tick_of(job) for job in await jobs_of(app, "j"))
    assert ticks == [T0 + 420, T0 + 480, T0 + 540, T0 + 600]  # the latest four
    shown = await app.get_recurring("s")
    assert shown is not None
    assert shown.next_run == datetime.fromtimestamp(T0 + 660, UTC)


async def test_catch_up_all_within_the_bound_fires_every_tick(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, cron="*/15 * * * *", catch_up="all")
    await set_next_run(app, "s", T0)
    assert await app.scheduler().tick(now=T0 + 3600 + 60) == 5
    ticks = sorted(tick_of(job) for job in await jobs_of(app, "j"))
    assert ticks == [T0 + quarter * 900 for quarter in range(5)]
    shown = await app.get_recurring("s")
    assert shown is not None
    assert shown.next_run == datetime.fromtimestamp(T0 + 3600 + 900, UTC)


async def test_cron_catch_up_once_moves_next_run_past_now(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, cron="0 * * * *")
    await set_next_run(app, "s", T0)
    now = T0 + 5 * 3600 + 1800  # five and a half hours down
    assert await app.scheduler().tick(now=now) == 1
    (job,) = await jobs_of(app, "j")
    assert tick_of(job) == T0 + 5 * 3600
    shown = await app.get_recurring("s")
    assert shown is not None
    assert shown.next_run == datetime.fromtimestamp(T0 + 6 * 3600, UTC)


# --------------------------------------------------------------------------- events, errors


async def test_scheduler_tick_event_carries_the_schedule_and_its_jobs(app: Conveyor) -> None:
    register(app, "j")
    events: list[Event] = []
    app.on("scheduler.tick", events.append)
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)
    assert await app.scheduler().tick(now=T0 + 125) == 1
    (job,) = await jobs_of(app, "j")
    (event,) = events
    assert event.name == "scheduler.tick"
    assert event.job is None
    assert event.data["schedule"] == "s"
    assert event.data["jobs"] == [job.id]
    assert event.data["ticks"] == [datetime.fromtimestamp(T0 + 120, UTC)]
    assert event.data["missed"] == 3
    assert event.data["next_run"] == datetime.fromtimestamp(T0 + 180, UTC)
    assert event.data["error"] is None
    await app.scheduler().tick(now=T0 + 125)
    assert len(events) == 1


async def test_a_record_that_cannot_make_a_job_records_last_error_and_others_still_fire(
    app: Conveyor, peer: Peer
) -> None:
    register(app, "known", "elsewhere")
    await app.recurring("broken", "elsewhere", {}, every=60)
    await app.recurring("fine", "known", {}, every=60)
    for name in ("broken", "fine"):
        await set_next_run(app, name, T0)
    # A record edited by hand (or by a buggy tool) into options no job can have.
    rec = await record_of(app, "broken")
    rec.options = '{"queue": "", "priority": 0, "retries": 3, "timeout": 30.0}'
    await store(app).schedule_put(rec)
    other = await peer()  # registers neither type: it fires from the records
    events: list[Event] = []
    other.on("scheduler.tick", events.append)

    assert await other.scheduler().tick(now=T0 + 1) == 1
    assert len(await jobs_of(app, "known")) == 1
    assert await jobs_of(app, "elsewhere") == []
    broken = await app.get_recurring("broken")
    assert broken is not None
    assert broken.last_error is not None
    assert "queue" in broken.last_error
    assert broken.last_run is None
    errors = [e.data["error"] for e in events if e.data["schedule"] == "broken"]
    assert len(errors) == 1 and "queue" in errors[0]
    fine = await app.get_recurring("fine")
    assert fine is not None and fine.last_error is None

    # Storing the schedule again repairs it: the next tick fires and clears the error.
    await app.recurring("broken", "elsewhere", {}, every=60)
    assert await other.scheduler().tick(now=T0 + 61) == 2
    broken = await app.get_recurring("broken")
    assert broken is not None
    assert broken.last_error is None
    assert broken.last_run == datetime.fromtimestamp(T0 + 61, UTC)


# --------------------------------------------------------------------------- workers


async def test_a_worker_with_the_scheduler_fires_about_once_a_second(
    app: Conveyor, worker: Any
) -> None:
    runs = register(app, "j")
    created = time.monotonic()
    made = await app.recurring("s", "j", {"hello": "world"}, every=1)
    assert made.next_run is not None
    async with worker(app, scheduler_interval=0.05):
        # Two runs (ticks 1 s and 2 s after creation), not sooner; a slow
        # machine only makes this wait longer.
        await eventually(lambda: len(runs) >= 2, WAIT, "two runs")
        assert time.monotonic() - created >= 1.9
        await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - created)))
    elapsed = time.monotonic() - created
    jobs = await jobs_of(app, "j")
    # About once a second: one job per whole second elapsed, at most.
    assert 2 <= len(jobs) <= max(2, int(elapsed)), (elapsed, [j.key for j in jobs])
    # Distinct ticks on the schedule's own one-second grid.
    offsets = sorted(tick_of(job) - made.next_run.timestamp() for job in jobs)
    assert offsets == [pytest.approx(round(o), abs=0.002) for o in offsets]
    assert len(set(map(round, offsets))) == len(offsets)
    assert 2 <= len(runs) <= len(jobs)
    assert runs[0] == {"hello": "world"}


async def test_a_worker_without_the_scheduler_fires_nothing(app: Conveyor, worker: Any) -> None:
    runs = register(app, "j")
    made = await app.recurring("s", "j", {}, every=0.2)
    async with worker(app, scheduler=False, scheduler_interval=0.05):
        await asyncio.sleep(0.8)  # four ticks with the scheduler on
    assert await jobs_of(app, "j") == []
    assert runs == []
    assert await app.get_recurring("s") == made


# --------------------------------------------------------------------------- time zones


async def test_cron_next_run_is_computed_in_the_schedule_zone(app: Conveyor) -> None:
    register(app, "j")
    before = time.time()
    made = await app.recurring("s", "j", {}, cron="0 9 * * *", tz="America/New_York")
    assert made.next_run is not None
    assert made.next_run.astimezone(UTC).hour in (13, 14)  # EDT or EST
    local = made.next_run.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (9, 0)
    assert before < made.next_run.timestamp() <= before + 25 * 3600


@pytest.mark.parametrize(
    ("day", "utc_hour"),
    [(datetime(2026, 1, 15), 14), (datetime(2026, 7, 15), 13)],
    ids=["winter", "summer"],
)
async def test_cron_ticks_in_the_zone_in_winter_and_summer(
    app: Conveyor, day: datetime, utc_hour: int
) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, cron="0 9 * * *", tz="America/New_York")
    start = day.replace(tzinfo=UTC).timestamp()
    await set_next_run(app, "s", first_run("0 9 * * *", None, "America/New_York", start))
    scheduler = app.scheduler()
    for step in range(0, 24 * 3600, 1800):
        await scheduler.tick(now=start + step)
    (job,) = await jobs_of(app, "j")
    fired = datetime.fromtimestamp(tick_of(job), UTC)
    assert (fired.date(), fired.hour, fired.minute) == (day.date(), utc_hour, 0)


DST_CASES = [
    # zone, transition day, when the 02:30 job runs that day (UTC): a skipped
    # 02:30 runs at the end of the gap (03:00 local); a repeated one (Berlin)
    # at its first occurrence, still on summer time. New York repeats 01:xx.
    pytest.param(
        "America/New_York", datetime(2026, 3, 8), datetime(2026, 3, 8, 7, 0), id="new-york-spring"
    ),
    pytest.param(
        "America/New_York", datetime(2026, 11, 1), datetime(2026, 11, 1, 7, 30), id="new-york-fall"
    ),
    pytest.param(
        "Europe/Berlin", datetime(2026, 3, 29), datetime(2026, 3, 29, 1, 0), id="berlin-spring"
    ),
    pytest.param(
        "Europe/Berlin", datetime(2026, 10, 25), datetime(2026, 10, 25, 0, 30), id="berlin-fall"
    ),
]


@pytest.mark.parametrize(("tz", "day", "runs_at"), DST_CASES)
async def test_daily_0230_runs_once_a_day_across_a_dst_change(
    app: Conveyor, tz: str, day: datetime, runs_at: datetime
) -> None:
    zone = ZoneInfo(tz)
    register(app, "j")
    await app.recurring("s", "j", {}, cron="30 2 * * *", tz=tz)
    # From midnight the day before the change to midnight the day after next,
    # ticking every ten minutes.
    start = datetime(day.year, day.month, day.day, tzinfo=zone) - timedelta(days=1)
    end = start + timedelta(days=3)
    await set_next_run(app, "s", first_run("30 2 * * *", None, tz, start.timestamp()))
    scheduler = app.scheduler()
    now = start.timestamp()
    while now < end.timestamp():
        await scheduler.tick(now=now)
        now += 600

    fired = sorted(datetime.fromtimestamp(tick_of(j), zone) for j in await jobs_of(app, "j"))
    per_day = Counter(f.date() for f in fired)
    days = [(start + timedelta(days=n)).date() for n in range(3)]
    assert per_day == dict.fromkeys(days, 1), fired
    assert fired[1].astimezone(UTC) == runs_at.replace(tzinfo=UTC), fired
    # The days before and after run at 02:30 local time.
    assert [(f.hour, f.minute) for f in (fired[0], fired[2])] == [(2, 30), (2, 30)]


# --------------------------------------------------------------------------- one-off jobs far ahead


@pytest.mark.parametrize(
    "when",
    ["delay-timedelta", "delay-seconds", "run_at", "delay-30-days"],
)
@needs("driven_clock")
async def test_a_job_days_ahead_is_scheduled_and_claimed_only_when_due(
    app: Conveyor, when: str
) -> None:
    register(app, "j")
    before = time.time()
    if when == "delay-timedelta":
        job = await app.enqueue("j", {"n": 1}, delay=timedelta(days=3))
        due = before + 3 * 86400
    elif when == "delay-seconds":
        job = await app.enqueue("j", {"n": 1}, delay=3 * 86400)
        due = before + 3 * 86400
    elif when == "run_at":
        run_at = datetime.now(UTC) + timedelta(days=3)
        job = await app.enqueue("j", {"n": 1}, run_at=run_at)
        due = run_at.timestamp()
    else:
        job = await app.enqueue("j", {"n": 1}, delay=timedelta(days=30))
        due = before + 30 * 86400

    assert job.state is JobState.SCHEDULED
    assert job.run_at is not None
    assert job.run_at.timestamp() == pytest.approx(due, abs=1.0)
    stored = await app.get_job(job.id)
    assert stored is not None
    assert stored.state is JobState.SCHEDULED
    assert stored.run_at is not None
    assert abs(stored.run_at.timestamp() - job.run_at.timestamp()) < 0.002

    backend = app.backend
    assert await backend.claim(["default"], 10, 30.0, now=time.time()) == []
    assert await backend.claim(["default"], 10, 30.0, now=job.run_at.timestamp() - 1) == []
    claimed = await backend.claim(["default"], 10, 30.0, now=job.run_at.timestamp() + 1)
    assert [c.id for c in claimed] == [job.id]
    assert claimed[0].state is JobState.RUNNING
    assert claimed[0].payload == {"n": 1}


async def test_a_worker_fires_jobs_that_run(app: Conveyor, worker: Any) -> None:
    """End to end on one backend: a due schedule's job is run by a worker."""
    runs = register(app, "j")
    await app.recurring("s", "j", {"go": True}, every=3600)
    await set_next_run(app, "s", time.time() - 1)
    async with worker(app, scheduler_interval=0.05):
        await eventually(lambda: runs, WAIT, "the recurring job to run")
    assert runs == [{"go": True}]
    (job,) = await jobs_of(app, "j")
    assert job.state is JobState.COMPLETED
