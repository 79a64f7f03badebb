"""The stores a backend may keep beside its jobs: recurring schedules, locks,
the cache, worker presence and queue pauses. A backend whose `capabilities`
says recurring / locks / cache / pause implements the matching protocol
below as well (conveyor/backends/base.py holds the job queue's seam)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from conveyor.backends.base import NewJob
    from conveyor.job import Job

# Capability protocols: a backend whose `capabilities` says recurring / locks /
# cache implements the matching protocol below as well.


@dataclass(slots=True)
class ScheduleRecord:
    """A recurring schedule as stored. `next_run` is the compare-and-set field:
    only the scheduler that moves it from the value it read fires that tick."""

    name: str
    job_name: str
    payload: str  # JSON text
    cron: str | None
    every: float | None  # seconds
    tz: str
    key: str | None
    enabled: bool
    next_run: float
    created_at: float
    updated_at: float
    last_run: float | None = None
    last_error: str | None = None
    catch_up: str = "once"  # once | skip | all
    max_catch_up: int = 100
    misfire_grace: float = 60.0
    options: str = "{}"  # JSON: enqueue options (queue, priority, retries, timeout)


def same_turn(stored: ScheduleRecord, expected: ScheduleRecord) -> bool:
    """Whether no fire, enable or disable changed `stored` since `expected`
    was read (schedule_put's compare-and-set)."""
    return (stored.next_run, stored.enabled) == (expected.next_run, expected.enabled)


@runtime_checkable
class ScheduleStore(Protocol):
    async def schedule_put(
        self, record: ScheduleRecord, expected: ScheduleRecord | None = None
    ) -> bool:
        """Create or replace the schedule named `record.name`; True if written.
        With `expected` (the record as read before), a compare-and-set: the
        schedule is replaced only while it still exists with expected's
        next_run and enabled (a scheduler's fire, an enable or disable, or a
        delete since the read: False, nothing written)."""

    async def schedule_get(self, name: str) -> ScheduleRecord | None: ...

    async def schedule_list(self) -> list[ScheduleRecord]:
        """All schedules, ordered by name."""

    async def schedule_delete(self, name: str) -> bool: ...

    async def schedule_due(self, now: float | None, limit: int) -> list[ScheduleRecord]:
        """Enabled schedules whose next_run <= now (None: the backend's
        clock), earliest first."""

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        """Atomically: if the schedule is enabled and its next_run still equals
        `expected_next_run`, set next_run / last_run / last_error and enqueue
        `jobs` (same rules as `Backend.enqueue`, by the backend's clock);
        return the jobs. Else change
        nothing and return None (another scheduler fired this tick)."""


@runtime_checkable
class LockStore(Protocol):
    async def lock_acquire(
        self, key: str, token: str, ttl: float, now: float | None = None
    ) -> bool:
        """Take the lock if it is free or expired."""

    async def lock_release(self, key: str, token: str) -> bool:
        """Release only if `token` holds it (and it has not expired)."""

    async def lock_extend(self, key: str, token: str, ttl: float, now: float | None = None) -> bool:
        """Extend to now + ttl only if `token` still holds it unexpired."""


@runtime_checkable
class CacheStore(Protocol):
    async def cache_get(self, key: str, now: float | None = None) -> str | None:
        """JSON text, or None when missing or expired."""

    async def cache_set(
        self, key: str, value: str, ttl: float | None, now: float | None = None
    ) -> None: ...

    async def cache_delete(self, key: str) -> bool: ...


# --------------------------------------------------------------------------- workers

# A worker record not renewed within its TTL is stale (its worker was killed,
# or is stuck, or cut off): kept this long after its TTL ran out, shown as
# stale, then forgotten.
STALE_WORKER_KEPT = 600.0


@dataclass(frozen=True, slots=True)
class RunningJobInfo:
    """A job a worker was running at its latest beat (started_at: epoch seconds)."""

    id: str
    name: str
    started_at: float


@dataclass(slots=True)
class WorkerInfo:
    """A worker's presence record: who it is, what it serves and what it runs.
    Times are epoch seconds; `last_seen` is the time of its latest beat (by
    the worker's clock). `stale` is set on read: the record was not renewed
    within its TTL (the worker is gone, stuck or cut off)."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    names: tuple[str, ...]  # the job names it has handlers for
    started_at: float
    last_seen: float
    concurrency: int = 0  # 0: not said (a worker of an older release)
    running: tuple[RunningJobInfo, ...] = ()
    stale: bool = False

    def details(self) -> dict[str, Any]:
        """What a backend stores beside the identity columns, as JSON-ready data."""
        return {
            "concurrency": self.concurrency,
            "running": [[job.id, job.name, job.started_at] for job in self.running],
        }

    @staticmethod
    def running_from(rows: Sequence[Sequence[Any]]) -> tuple[RunningJobInfo, ...]:
        """`details()["running"]` as stored, back to records."""
        return tuple(RunningJobInfo(str(i), str(n), float(s)) for i, n, s in rows)


@runtime_checkable
class WorkerRegistry(Protocol):
    """Optional: worker presence, and what waits by job name, so that a job
    nobody can run (no live worker serves its name in its queue) is visible.

    A worker beats on start and every few seconds and says goodbye at stop; a
    record not renewed within its TTL counts as gone (a killed worker): it is
    kept STALE_WORKER_KEPT seconds more, read as stale, then forgotten."""

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float | None = None) -> None:
        """Create or replace the record of `info.id` (with its concurrency and
        running jobs), live until `now + ttl`; forget the records stale for
        longer than STALE_WORKER_KEPT."""

    async def worker_gone(self, worker_id: str) -> None:
        """Remove the record (no error when there is none)."""

    async def workers(
        self, now: float | None = None, *, include_stale: bool = False
    ) -> list[WorkerInfo]:
        """The records still live at `now`, ordered by (started_at, id); with
        `include_stale`, also those whose TTL ran out less than
        STALE_WORKER_KEPT seconds ago, flagged `stale`."""

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        """{queue: {job name: queued jobs}}, leaving out zero counts."""


# --------------------------------------------------------------------------- pauses


@runtime_checkable
class QueuePauses(Protocol):
    """Optional (with `capabilities.pause`): the set of paused queues, kept
    where every worker reads it. Workers stop claiming from a paused queue;
    enqueues to it go on as ever. The backend only keeps the set: claims do
    not look at it (workers leave paused queues out of what they claim)."""

    async def pause_queue(self, queue: str) -> bool:
        """Add `queue` to the set; False when it was in it already."""

    async def resume_queue(self, queue: str) -> bool:
        """Remove `queue` from the set; False when it was not in it."""

    async def paused_queues(self) -> set[str]:
        """The paused queues (one cheap read: workers call it every second)."""
