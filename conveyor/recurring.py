"""Recurring schedules on the facade: `app.recurring(...)` and its siblings,
a mixin of `Conveyor`. Firing them is the scheduler's (scheduler.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Protocol

from conveyor._sync import Portal, blocking
from conveyor.backends.base import Backend, NewJob
from conveyor.backends.stores import ScheduleRecord, ScheduleStore
from conveyor.durations import seconds_within
from conveyor.events import EventBus
from conveyor.job import ConveyorError, Job
from conveyor.scheduler import (
    CATCH_UP_POLICIES,
    InvalidScheduleError,
    Schedule,
    first_run,
    job_for,
    job_options,
    parse_cron,
    parse_every,
    parse_tz,
    schedule_store,
    stored_options,
)

if TYPE_CHECKING:
    from conveyor.registry import JobType


class _Facade(Protocol):
    """What these methods use of `Conveyor`."""

    backend: Backend
    url: str
    portal: Portal
    registry: dict[str, JobType[Any, Any]]
    events: EventBus

    async def open(self) -> None: ...

    def _new_job(
        self,
        name: str,
        payload: Any,
        now: float,
        *,
        priority: int | None = None,
        retries: int | None = None,
        timeout: float | EllipsisType | None = ...,
        queue: str | None = None,
    ) -> NewJob: ...


class RecurringSchedules:
    """`Conveyor`'s recurring-schedule methods."""

    async def recurring(
        self: _Facade,
        name: str,
        job_name: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every: float | timedelta | str | None = None,
        tz: str = "UTC",
        key: str | None = None,
        enabled: bool | None = None,
        catch_up: str = "once",
        max_catch_up: int = 100,
        misfire_grace: float = 60.0,
        queue: str | None = None,
        priority: int | None = None,
        retries: int | None = None,
        timeout: float | EllipsisType | None = ...,
    ) -> Schedule:
        """Create or update the schedule `name`: enqueue `job_name` with
        `payload` on a cron (in time zone `tz`) or every interval.

        Updating keeps the next run unless the cron, interval or zone changed,
        and keeps it enabled or disabled unless `enabled` is given.
        Any worker running with the scheduler enabled fires it, once per tick,
        whether or not it registers `job_name`: the payload is validated and
        the job options (queue, priority, retries, timeout; those left out are
        the job type's defaults as registered now) are stored with the
        schedule. After changing a job type's defaults, call `recurring()`
        again (as a seed script run at deploy does) to store the new ones.
        """
        if not isinstance(name, str) or not name:
            raise InvalidScheduleError(f"a schedule name must be a non-empty string, got {name!r}")
        cron_text, seconds = check_timing(cron, every, tz, catch_up, max_catch_up, misfire_grace)
        # Resolved and checked against the registered job type now, exactly as
        # an enqueue would: the record then holds everything a tick's job
        # needs, so a scheduler that does not register the type fires it too.
        resolved = self._new_job(
            job_name,
            payload,
            time.time(),
            queue=queue,
            priority=priority,
            retries=retries,
            timeout=timeout,
        )
        definition = ScheduleRecord(
            name=name,
            job_name=job_name,
            payload=resolved.payload,
            cron=cron_text,
            every=seconds,
            tz=tz,
            key=key,
            enabled=enabled is not False,
            next_run=0.0,  # these four: from the stored record, or now
            created_at=0.0,
            updated_at=0.0,
            catch_up=catch_up,
            max_catch_up=max_catch_up,
            misfire_grace=float(misfire_grace),
            options=stored_options(resolved),
        )
        store = await _store(self)
        for _ in range(_CAS_TRIES):
            now = await self.backend.clock()  # next_run is due by the backend's clock
            old = await store.schedule_get(name)
            record = _stored_over(definition, old, now, enabled)
            if old is not None and replace(record, updated_at=old.updated_at) == old:
                # The same definition again (every worker's start, a seed
                # script re-run): nothing to write, and nothing to undo.
                return Schedule.from_record(old)
            # Written only if no scheduler fired it since the read (writing
            # back the read's next run would fire that tick again) and no one
            # enabled or disabled it; else read again and redo.
            if await store.schedule_put(record, old):
                return Schedule.from_record(record)
        raise _kept_changing(name)

    async def get_recurring(self: _Facade, name: str) -> Schedule | None:
        rec = await (await _store(self)).schedule_get(name)
        return None if rec is None else Schedule.from_record(rec)

    async def list_recurring(self: _Facade) -> list[Schedule]:
        return [Schedule.from_record(r) for r in await (await _store(self)).schedule_list()]

    async def enable_recurring(self: _Facade, name: str) -> bool:
        """Enable a schedule; its next run is computed from now. False if unknown."""
        return await _set_enabled(self, name, True)

    async def disable_recurring(self: _Facade, name: str) -> bool:
        """Stop firing a schedule but keep it listed. False if unknown."""
        return await _set_enabled(self, name, False)

    async def delete_recurring(self: _Facade, name: str) -> bool:
        """Remove a schedule for good. False if unknown."""
        return await (await _store(self)).schedule_delete(name)

    async def run_recurring(self: _Facade, name: str) -> Job | None:
        """Enqueue one job of the schedule `name` now, as a tick would (its
        stored payload and options), leaving its next run where it is; the
        job (None when there is no such schedule)."""
        rec = await (await _store(self)).schedule_get(name)
        if rec is None:
            return None
        options = job_options(rec, self.registry)
        if options is None:
            raise InvalidScheduleError(
                f"schedule {name!r} was stored without its job options (by an older "
                f"conveyor) and job {rec.job_name!r} is not registered here; call "
                "recurring() again to store them"
            )
        now = await self.backend.clock()
        (job,) = await self.backend.enqueue([job_for(rec, options, now, now)])
        if not job.duplicate:
            self.events.emit("job.enqueued", job)
        return job

    async def cancel_recurring(
        self: _Facade,
        name: str | None = None,
        *,
        key: str | None = None,
        cron: str | None = None,
        every: float | timedelta | str | None = None,
    ) -> int:
        """Remove exactly the schedules matching every criterion given (name,
        key, cron, interval); return how many. Seed scripts use it to undo
        precisely what they created."""
        if name is None and key is None:
            raise InvalidScheduleError("cancel_recurring needs name= or key=")
        cron_text = parse_cron(cron) if cron is not None else None
        seconds = parse_every(every) if every is not None else None
        store = await _store(self)
        removed = 0
        for rec in await store.schedule_list():
            if (
                (name is None or rec.name == name)
                and (key is None or rec.key == key)
                # Cron reads names of months and days in any case.
                and (cron_text is None or (rec.cron or "").lower() == cron_text.lower())
                and (seconds is None or rec.every == seconds)
            ) and await store.schedule_delete(rec.name):
                removed += 1
        return removed

    recurring_sync = blocking(recurring)
    get_recurring_sync = blocking(get_recurring)
    list_recurring_sync = blocking(list_recurring)
    enable_recurring_sync = blocking(enable_recurring)
    disable_recurring_sync = blocking(disable_recurring)
    delete_recurring_sync = blocking(delete_recurring)
    run_recurring_sync = blocking(run_recurring)
    cancel_recurring_sync = blocking(cancel_recurring)


def check_timing(
    cron: str | None,
    every: float | timedelta | str | None,
    tz: str,
    catch_up: str,
    max_catch_up: int,
    misfire_grace: float,
) -> tuple[str | None, float | None]:
    """Check a schedule's timing and catch-up options; return the normalised
    cron text and the interval in seconds (one of them is None)."""
    if (cron is None) == (every is None):
        raise InvalidScheduleError("give exactly one of cron= or every=")
    cron_text = parse_cron(cron) if cron is not None else None
    seconds = parse_every(every) if every is not None else None
    parse_tz(tz)
    if catch_up not in CATCH_UP_POLICIES:
        raise InvalidScheduleError(
            f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, got {catch_up!r}"
        )
    if isinstance(max_catch_up, bool) or not isinstance(max_catch_up, int) or max_catch_up < 1:
        raise InvalidScheduleError(f"max_catch_up must be an integer >= 1, got {max_catch_up!r}")
    if not seconds_within(misfire_grace, allow_zero=True):
        raise InvalidScheduleError(
            f"misfire_grace must be >= 0 seconds and finite, got {misfire_grace!r}"
        )
    return cron_text, seconds


async def _store(app: _Facade) -> ScheduleStore:
    await app.open()
    return schedule_store(app.backend)


async def _set_enabled(app: _Facade, name: str, enabled: bool) -> bool:
    store = await _store(app)
    for _ in range(_CAS_TRIES):
        old = await store.schedule_get(name)
        if old is None:
            return False
        if old.enabled == enabled:
            return True
        now = await app.backend.clock()
        # No burst of catch-up for the time it was off.
        next_run = first_run(old.cron, old.every, old.tz, now) if enabled else old.next_run
        record = replace(old, enabled=enabled, updated_at=now, next_run=next_run)
        if await store.schedule_put(record, old):  # else a tick fired meanwhile: redo
            return True
    raise _kept_changing(name)


# A schedule rewritten (read, then compare-and-set) this many times over, each
# time changed by another writer in between, is given up on with an error.
_CAS_TRIES = 100


def _kept_changing(name: str) -> ConveyorError:
    return ConveyorError(
        f"schedule {name!r} changed under every one of {_CAS_TRIES} writes"
        " (another writer rewrites it without pause); nothing was written"
    )


def _stored_over(
    definition: ScheduleRecord, old: ScheduleRecord | None, now: float, enabled: bool | None
) -> ScheduleRecord:
    """`definition` as recurring() stores it over `old` (None: a new one):
    the next run is kept unless the timing changed (or it was disabled), and
    enabled kept unless `enabled` is given (a seed script re-run at deploy
    time must not re-enable a schedule an operator disabled)."""
    if old is None:
        first = first_run(definition.cron, definition.every, definition.tz, now)
        return replace(definition, next_run=first, created_at=now, updated_at=now)
    timing = (definition.cron, definition.every, definition.tz)
    keep_next = (old.cron, old.every, old.tz) == timing and old.enabled
    return replace(
        definition,
        enabled=old.enabled if enabled is None else enabled,
        next_run=old.next_run
        if keep_next
        else first_run(definition.cron, definition.every, definition.tz, now),
        created_at=old.created_at,
        updated_at=now,
        last_run=old.last_run,
        last_error=old.last_error,
    )
