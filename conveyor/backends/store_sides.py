"""The job-record side of a backend that keeps its records in another
backend, its store (`?store=<conveyor URL>`): a broker with a store
(broker/stored.py) and Cloud Tasks (cloudtasks/). Reads, admin calls,
schedules, locks, the cache and worker presence go to the store as they are;
what the store lacks is refused naming it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import Backend, CancelResult, ClaimToken, NewJob
from conveyor.backends.optional import DeliveryStore
from conveyor.backends.stores import (
    CacheStore,
    LockStore,
    QueuePauses,
    ScheduleRecord,
    ScheduleStore,
    WorkerInfo,
    WorkerRegistry,
)
from conveyor.job import EnqueueFailedError, Job, JobState, NotSupportedError


class StoreSides:
    """Mixed in before the backend's own class, so these win."""

    store: Backend
    _delivery: DeliveryStore

    async def _withdraw(self, unconfirmed: Sequence[str], why: str) -> None:
        """Jobs whose delivery was not confirmed must not run behind the
        caller's back: withdraw them from the store, keys and all, so that
        the caller's retry (with the same key) enqueues them afresh, and
        raise naming them. One a worker has taken meanwhile went out after
        all (only its reply was lost; it may have run, failed and wait for a
        retry, or finished and been dropped by retention): it cannot be
        withdrawn, and it is enqueued, so it is not named; when that is all
        of them, nothing is raised."""
        withdrawn = sorted(await self._delivery.withdraw(unconfirmed))
        # The rest went out: a worker has them, or had them (ran, perhaps
        # finished and dropped by retention already).
        went_out = sorted(set(unconfirmed) - set(withdrawn))
        if not withdrawn:
            return
        also = ""
        if went_out:
            listed = ", ".join(went_out[:5]) + (" ..." if len(went_out) > 5 else "")
            also = (
                f"; {len(went_out)} went out after all and a worker has them"
                f" ({listed}): do not enqueue those again"
            )
        raise EnqueueFailedError(
            f"{why}; {len(withdrawn)} job(s) not enqueued (withdrawn from the store,"
            f" their keys free): enqueue them again{also}",
            failed=withdrawn,
        )

    async def _send_fired(self, fired: Sequence[Job], jobs: Sequence[NewJob]) -> None:
        """Deliver the jobs a schedule fired that are due now (the store
        queued them; the delivery is the backend's)."""
        raise NotImplementedError

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        return await self.store.progress(job_id, token, progress, logs)

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        # A queued job's message or task, when it comes, finds it cancelled.
        return await self.store.cancel(job_id, now)

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    async def get_by_key(self, key: str) -> Job | None:
        return await self.store.get_by_key(key)

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        return await self.store.list_jobs(
            state=state, name=name, queue=queue, limit=limit, offset=offset
        )

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        return await self.store.purge(states, older_than, queue)

    async def stats(self) -> dict[str, dict[str, int]]:
        return await self.store.stats()

    # ------------------------------------------------------------------ the store's other sides

    def _side(self, protocol: type, what: str) -> Any:
        if not isinstance(self.store, protocol):
            raise NotSupportedError(f"the store {self.store.url} has no {what}")
        return self.store

    async def schedule_put(
        self, record: ScheduleRecord, expected: ScheduleRecord | None = None
    ) -> bool:
        written: bool = await self._side(ScheduleStore, "recurring schedules").schedule_put(
            record, expected
        )
        return written

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        found: ScheduleRecord | None = await self._side(ScheduleStore, "schedules").schedule_get(
            name
        )
        return found

    async def schedule_list(self) -> list[ScheduleRecord]:
        found: list[ScheduleRecord] = await self._side(ScheduleStore, "schedules").schedule_list()
        return found

    async def schedule_delete(self, name: str) -> bool:
        return bool(await self._side(ScheduleStore, "schedules").schedule_delete(name))

    async def schedule_due(self, now: float | None, limit: int) -> list[ScheduleRecord]:
        found: list[ScheduleRecord] = await self._side(ScheduleStore, "schedules").schedule_due(
            now, limit
        )
        return found

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        fired: list[Job] | None = await self._side(ScheduleStore, "schedules").schedule_fire(
            name, expected_next_run, next_run, last_run, last_error, jobs
        )
        if fired:
            due = [j for j in fired if not j.duplicate and j.state is JobState.QUEUED]
            await self._send_fired(due, jobs)
        return fired

    async def lock_acquire(
        self, key: str, token: str, ttl: float, now: float | None = None
    ) -> bool:
        return bool(await self._side(LockStore, "locks").lock_acquire(key, token, ttl, now))

    async def lock_release(self, key: str, token: str) -> bool:
        return bool(await self._side(LockStore, "locks").lock_release(key, token))

    async def lock_extend(self, key: str, token: str, ttl: float, now: float | None = None) -> bool:
        return bool(await self._side(LockStore, "locks").lock_extend(key, token, ttl, now))

    async def cache_get(self, key: str, now: float | None = None) -> str | None:
        found: str | None = await self._side(CacheStore, "cache").cache_get(key, now)
        return found

    async def cache_set(
        self, key: str, value: str, ttl: float | None, now: float | None = None
    ) -> None:
        await self._side(CacheStore, "cache").cache_set(key, value, ttl, now)

    async def cache_delete(self, key: str) -> bool:
        return bool(await self._side(CacheStore, "cache").cache_delete(key))

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float | None = None) -> None:
        await self._side(WorkerRegistry, "worker presence").worker_beat(info, ttl, now)

    async def worker_gone(self, worker_id: str) -> None:
        await self._side(WorkerRegistry, "worker presence").worker_gone(worker_id)

    async def workers(
        self, now: float | None = None, *, include_stale: bool = False
    ) -> list[WorkerInfo]:
        found: list[WorkerInfo] = await self._side(WorkerRegistry, "worker presence").workers(
            now, include_stale=include_stale
        )
        return found

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = await self._side(
            WorkerRegistry, "worker presence"
        ).queued_by_name()
        return found

    # The paused set lives in the store; workers leave paused queues out of
    # the queues they receive from, so the broker needs no part in it.
    async def pause_queue(self, queue: str) -> bool:
        return bool(await self._side(QueuePauses, "paused queues").pause_queue(queue))

    async def resume_queue(self, queue: str) -> bool:
        return bool(await self._side(QueuePauses, "paused queues").resume_queue(queue))

    async def paused_queues(self) -> set[str]:
        found: set[str] = await self._side(QueuePauses, "paused queues").paused_queues()
        return found
