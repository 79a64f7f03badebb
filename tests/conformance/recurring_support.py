"""What the recurring-schedule conformance tests share: fixed instants to
tick at, handlers that record their runs, and reading and moving a
schedule's stored record through the backend's ScheduleStore (the same
record every scheduler reads), so nothing depends on today's date."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from conveyor import (
    Conveyor,
    Job,
)
from conveyor.backends.stores import ScheduleRecord, ScheduleStore
from conveyor.scheduler import Schedule

# A fixed past instant to tick at: 2026-01-05 12:00:00 UTC, a Monday.
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC).timestamp()


class Digest(BaseModel):
    kind: str


def register(app: Conveyor, *names: str, **options: Any) -> list[Any]:
    """Register no-op handlers that record each payload they run with."""
    runs: list[Any] = []
    for name in names:

        @app.job(name, **options)
        async def handler(payload: Any) -> None:
            runs.append(payload)

    return runs


def store(app: Conveyor) -> ScheduleStore:
    backend = app.backend
    assert isinstance(backend, ScheduleStore)
    return backend


async def record_of(app: Conveyor, name: str) -> ScheduleRecord:
    rec = await store(app).schedule_get(name)
    assert rec is not None, f"no schedule {name!r}"
    return rec


async def set_next_run(app: Conveyor, name: str, when: float) -> None:
    """Move a schedule's stored next tick (as if it had been created long ago)."""
    rec = await record_of(app, name)
    rec.next_run = when
    await store(app).schedule_put(rec)


async def jobs_of(app: Conveyor, name: str) -> list[Job]:
    return await app.list_jobs(name=name, limit=1000)


def tick_of(job: Job) -> float:
    """The tick a recurring job was enqueued for, from its idempotency key."""
    assert job.key is not None and job.key.startswith("recurring:"), job.key
    return float(job.key.rsplit(":", 1)[1])


def names(schedules: list[Schedule]) -> list[str]:
    return [s.name for s in schedules]
