"""Recurring schedules: cron and interval specs, time zones, catch-up, firing.

Time zones: a cron schedule is evaluated on the wall clock of its own zone
(zoneinfo), by cronsim. Across daylight-saving changes:

* a wall time that does not exist (skipped by spring-forward, e.g. 02:30 in
  New York on the second Sunday of March) fires once, at the first instant
  after the gap (03:00 local);
* a wall time that happens twice (fall-back) fires once, at its first
  occurrence, for schedules that name the hour; a schedule that runs every hour
  (`*` in the hour field) runs in both real hours, as the clock says.

Interval schedules (`every=`) count real elapsed seconds, so they are immune to
the clock changes.

Exactly once per tick across any number of schedulers: a scheduler fires a
tick with the backend's `schedule_fire`, which moves `next_run` from the
value it read (compare-and-set) and enqueues the tick's jobs in the same
atomic step; the jobs also carry an idempotency key made of the schedule's
name and the tick.

Whichever scheduler fires: a tick's job is built from the stored record alone
(job name, payload, and the options `recurring()` resolved against the job
type and stored: queue, priority, retries, timeout), so a worker that does not
register the job type fires it as well as one that does. A record stored by
an older conveyor holds only the options given explicitly; the missing ones
are the job type's defaults, which only a scheduler that registers the type
knows, so one that does not leaves such a tick due for one that does (and
logs a warning once). Calling `recurring()` again stores the options in full.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from conveyor.backends.base import Backend, NewJob
from conveyor.backends.stores import ScheduleRecord, ScheduleStore
from conveyor.durations import InvalidDurationError, describe_seconds, parse_duration
from conveyor.job import (
    VERSION_KEY,
    InvalidOptionError,
    NotSupportedError,
    new_job_id,
    opened,
    utc,
)
from conveyor.options import check_priority, check_queue, check_retries, check_timeout
from conveyor.outage import Outage

if TYPE_CHECKING:
    from conveyor.events import EventBus
    from conveyor.options import JobDefaults
    from conveyor.registry import JobType

logger = logging.getLogger("conveyor.scheduler")

CATCH_UP_POLICIES = ("once", "skip", "all")

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class InvalidScheduleError(InvalidOptionError):
    """A malformed cron, an unknown time zone, an interval of zero or below."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring schedule as `list_recurring()` shows it."""

    name: str
    job_name: str
    payload: Any
    cron: str | None
    every: timedelta | None
    tz: str
    key: str | None
    enabled: bool
    next_run: datetime | None
    last_run: datetime | None
    last_error: str | None
    catch_up: str
    max_catch_up: int
    misfire_grace: float
    # The version of its job type the payload was stored as (each tick's job
    # carries it); `payload` is the payload as given, as Job.payload is.
    version: int = 1

    @property
    def spec(self) -> str:
        if self.cron is not None:
            return self.cron
        assert self.every is not None
        return f"every {describe_seconds(self.every.total_seconds())}"

    @classmethod
    def from_record(cls, rec: ScheduleRecord) -> Schedule:
        payload, version = json.loads(rec.payload), 1
        if type(payload) is dict and VERSION_KEY in payload:
            payload, version = opened(payload)
        return cls(
            name=rec.name,
            job_name=rec.job_name,
            payload=payload,
            version=version,
            cron=rec.cron,
            every=None if rec.every is None else timedelta(seconds=rec.every),
            tz=rec.tz,
            key=rec.key,
            enabled=rec.enabled,
            next_run=utc(rec.next_run) if rec.enabled else None,
            last_run=utc(rec.last_run),
            last_error=rec.last_error,
            catch_up=rec.catch_up,
            max_catch_up=rec.max_catch_up,
            misfire_grace=rec.misfire_grace,
        )


# --------------------------------------------------------------------------- specs


def parse_cron(expr: str) -> str:
    """Normalise and check a cron expression; the error names the bad field."""
    if not isinstance(expr, str) or not expr.strip():
        raise InvalidScheduleError(f"cron must be a non-empty string, got {expr!r}")
    text = " ".join(expr.split())
    text = _ALIASES.get(text.lower(), text)
    if len(text.split(" ")) != 5:
        raise InvalidScheduleError(
            f"bad cron expression {expr!r}: expected 5 fields "
            "(minute hour day-of-month month day-of-week) or @hourly/@daily/@weekly/@monthly"
        )
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise InvalidScheduleError(f"bad cron expression {expr!r}: {exc}") from None
    return text


def parse_every(value: float | int | timedelta | str) -> float:
    """Seconds of a schedule's interval (conveyor.durations.parse_duration)."""
    try:
        return parse_duration(value, what="the schedule's interval (every=)")
    except InvalidDurationError as exc:
        raise InvalidScheduleError(str(exc)) from None


def parse_tz(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidScheduleError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')"
        ) from None


def _spelled_minutes(cron: str) -> str:
    """`cron` with a wildcard minute field spelled out (`*` as `0-59`, `*/n`
    as `0-59/n`) where the hour field is named. The cron library fixes up a
    skipped or repeated wall time only for fields that do not start with
    `*`: without this, `*/30 2 * * *` would not fire at all on a spring-
    forward day and `*/30 1 * * *` twice per tick on a fall-back day, where
    `0,30 2 * * *` fires once."""
    fields = cron.split(" ", 2)
    if len(fields) == 3 and fields[0].startswith("*") and not fields[1].startswith("*"):
        return f"0-59{fields[0][1:]} {fields[1]} {fields[2]}"
    return cron


def next_after(rec: ScheduleRecord, after: float) -> float:
    """The first tick strictly after `after` (epoch seconds)."""
    if rec.cron is not None:
        zone = parse_tz(rec.tz)
        start = datetime.fromtimestamp(after, zone)
        # From a moment in the second pass of a repeated hour (a fall-back),
        # the cron library answers by wall time: a tick at that hour's first
        # pass, already gone. A daily 01:45 has then fired and must not again.
        for tick in CronSim(_spelled_minutes(rec.cron), start):
            if tick.timestamp() > after:
                return tick.timestamp()
        raise InvalidScheduleError(f"cron {rec.cron!r} has no tick after {start.isoformat()}")
    assert rec.every is not None
    # Intervals are anchored on the schedule's own ticks, not on when we look.
    anchor = rec.next_run
    if after < anchor:
        return anchor
    steps = int((after - anchor) // rec.every) + 1
    return anchor + steps * rec.every


def first_run(cron: str | None, every: float | None, tz: str, now: float) -> float:
    probe = ScheduleRecord(
        name="",
        job_name="",
        payload="null",
        cron=cron,
        every=every,
        tz=tz,
        key=None,
        enabled=True,
        next_run=now + (every or 0.0),
        created_at=now,
        updated_at=now,
    )
    return next_after(probe, now) if cron is not None else probe.next_run


@dataclass(frozen=True, slots=True)
class Plan:
    fire: list[float]  # the ticks to enqueue a job for
    missed: int  # ticks that were due, fired or not
    next_run: float


def plan(rec: ScheduleRecord, now: float, pass_interval: float = 0.0) -> Plan:
    """Which of the due ticks to fire, by the schedule's catch-up policy.

    A tick more than `misfire_grace` seconds late is a misfire, counting
    lateness beyond `pass_interval` (a scheduler that looks once a second
    sees a tick up to a second after it is due: that tick was not missed).
    `once` (the default) fires one job for however many ticks were missed;
    `skip` fires only a tick still within the grace period; `all` fires each
    missed tick, the latest `max_catch_up` of them.
    """
    bound = max(1, rec.max_catch_up)
    ticks, missed = _due_ticks(rec, now, bound)
    on_time = [t for t in ticks if now - t <= rec.misfire_grace + pass_interval]
    if rec.catch_up == "all":
        fire = ticks
    elif rec.catch_up == "skip":
        fire = on_time[-1:]
    else:
        fire = ticks[-1:]
    return Plan(fire=fire, missed=missed, next_run=next_after(rec, max(now, ticks[-1])))


_MAX_STEPS = 20_000  # cron ticks walked one by one before jumping ahead


def _due_ticks(rec: ScheduleRecord, now: float, keep: int) -> tuple[list[float], int]:
    """The latest `keep` ticks in [next_run, now] and how many there were."""
    if rec.every is not None:
        count = int((now - rec.next_run) // rec.every) + 1
        return [rec.next_run + i * rec.every for i in range(max(0, count - keep), count)], count
    kept: deque[float] = deque([rec.next_run], maxlen=keep)
    count, tick = 1, rec.next_run
    while count < _MAX_STEPS:
        tick = next_after(rec, tick)
        if tick > now:
            return list(kept), count
        kept.append(tick)
        count += 1
    # Down for a very long time: find the latest ticks by looking back from now.
    window = 3600.0
    while True:
        recent, tick = [], now - window
        while (tick := next_after(rec, tick)) <= now:
            recent.append(tick)
        if len(recent) >= keep or window > 400 * 86400:
            return (recent[-keep:] or [rec.next_run]), count + len(recent)
        window *= 4


# --------------------------------------------------------------------------- running


class Scheduler:
    """Fires due schedules; any number may run against one backend."""

    def __init__(
        self,
        backend: Backend,
        registry: Mapping[str, JobType[Any]],
        events: EventBus,
        interval: float = 1.0,
        *,
        outage: Outage | None = None,
    ) -> None:
        # The registry only fills options missing from records stored by
        # older releases; a schedule fires from its stored record.
        self.backend = backend
        self.registry = registry
        self.events = events
        self.interval = interval
        # A worker's shared outage log; a scheduler on its own makes its own.
        self._outage = outage if outage is not None else Outage(backend.url)
        # Schedules with incomplete stored options left due for a scheduler
        # that registers their job type: warned about once each.
        self._left_due: set[str] = set()

    def store(self) -> ScheduleStore:
        return schedule_store(self.backend)

    async def tick(self, now: float | None = None) -> int:
        """Fire every due schedule once; return how many jobs were enqueued."""
        store = self.store()
        # The backend's clock decides what is due (once per pass): a scheduler
        # whose own clock is off fires nothing early, nor late.
        now = await self.backend.clock() if now is None else now
        enqueued = 0
        for rec in await store.schedule_due(now, limit=100):
            enqueued += await self._fire(store, rec, now)
        return enqueued

    async def _fire(self, store: ScheduleStore, rec: ScheduleRecord, now: float) -> int:
        try:
            the_plan = plan(rec, now, self.interval)
        except Exception as exc:
            # A record this release cannot plan (a zone this machine no longer
            # knows, a cron text its parser refuses): it fails alone, tried
            # again in a minute, and the other schedules of the pass still fire.
            why = f"cannot plan the next run: {type(exc).__name__}: {exc}"
            logger.error("schedule %s %s", rec.name, why)
            await store.schedule_fire(rec.name, rec.next_run, now + 60, rec.last_run, why, [])
            return 0
        error = None
        jobs: list[NewJob] = []
        try:
            options = self._job_options(rec)
            if options is None:
                return 0  # left due for a scheduler that knows the job's defaults
            jobs = [job_for(rec, options, tick, now) for tick in the_plan.fire]
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.error("schedule %s cannot enqueue: %s", rec.name, error)
        fired = await store.schedule_fire(
            rec.name,
            rec.next_run,
            the_plan.next_run,
            now if jobs else rec.last_run,
            error,
            jobs,
        )
        if fired is None:
            return 0  # another scheduler fired this tick
        events = self.events
        if events.wants("job.enqueued"):
            for job in fired:
                if not job.duplicate:
                    events.emit("job.enqueued", job)
        events.emit(
            "scheduler.tick",
            None,
            schedule=rec.name,
            ticks=[utc(t) for t in the_plan.fire],
            missed=the_plan.missed,
            jobs=[job.id for job in fired],
            next_run=utc(the_plan.next_run),
            error=error,
        )
        return sum(1 for job in fired if not job.duplicate)

    def _job_options(self, rec: ScheduleRecord) -> dict[str, Any] | None:
        """`job_options`, warning once per schedule that is left due."""
        options = job_options(rec, self.registry)
        if options is None and rec.name not in self._left_due:
            self._left_due.add(rec.name)
            logger.warning(
                "schedule %s was stored without its %s (by an older conveyor): "
                "only a scheduler that registers job %r can fire it; call "
                "recurring() again to store them",
                rec.name,
                ", ".join(name for name in STORED_OPTIONS if name not in json.loads(rec.options)),
                rec.job_name,
            )
        return options

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            sent_at = self._outage.clock()
            try:
                await self.tick()
                failures = 0
                self._outage.answered(sent_at)
            except Exception as exc:
                failures += 1
                self._outage.failed("a scheduler pass", exc)
            # Passes start every interval: a pass that took a while (many
            # schedules, a slow backend) does not push the next one back by
            # its own length, which made every-second schedules fire late and
            # fold ticks into catch-ups.
            spent = self._outage.clock() - sent_at
            pause = max(self.interval - spent, 0.0)
            if failures:
                pause = min(self.interval * 2**failures, 30.0)
            try:
                async with asyncio.timeout(pause):
                    await stopping.wait()
            except TimeoutError:
                pass


# The options a schedule's record holds, resolved, so any scheduler can fire it.
STORED_OPTIONS = ("queue", "priority", "retries", "timeout")


def stored_options(job: NewJob) -> str:
    """The record's options (JSON) for jobs like `job`, as `recurring()` stores them."""
    return json.dumps(
        {
            "queue": job.queue,
            "priority": job.priority,
            "retries": job.max_retries,
            "timeout": job.timeout,
        }
    )


def _defaults_of(defaults: JobDefaults) -> dict[str, Any]:
    return {
        "queue": defaults.queue,
        "priority": defaults.priority,
        "retries": defaults.retries,
        "timeout": defaults.timeout,
    }


def job_options(rec: ScheduleRecord, registry: Mapping[str, JobType[Any]]) -> dict[str, Any] | None:
    """The options of the schedule's jobs, checked, from the record; None
    when the record lacks some and `registry` has no job type whose defaults
    they are."""
    stored = json.loads(rec.options)
    if not isinstance(stored, dict):
        raise InvalidOptionError(f"stored options are not a JSON object: {rec.options!r}")
    if any(name not in stored for name in STORED_OPTIONS):
        job_type = registry.get(rec.job_name)
        if job_type is None:
            return None
        stored = {**_defaults_of(job_type.defaults), **stored}
    return {
        "queue": check_queue(stored["queue"]),
        "priority": check_priority(stored["priority"]),
        "retries": check_retries(stored["retries"]),
        "timeout": check_timeout(stored["timeout"]),
    }


def job_for(rec: ScheduleRecord, options: dict[str, Any], tick: float, now: float) -> NewJob:
    """The job of one tick of the schedule: the record and its checked options."""
    return NewJob(
        id=new_job_id(),
        name=rec.job_name,
        queue=options["queue"],
        payload=rec.payload,
        priority=options["priority"],
        max_retries=options["retries"],
        timeout=options["timeout"],
        # The name, not the key: several schedules may share a key (a tag).
        key=f"recurring:{rec.name}:{tick:.3f}",
        created_at=now,
        run_at=now,
    )


def schedule_store(backend: Backend) -> ScheduleStore:
    if not backend.capabilities.recurring:
        raise NotSupportedError(f"the backend {backend.url} does not store recurring schedules")
    return cast(ScheduleStore, backend)
