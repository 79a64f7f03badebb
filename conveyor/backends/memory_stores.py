"""Recurring schedules, locks, the cache, worker presence and paused queues
of the memory backend: `MemoryStores`, the base class of `MemoryBackend`, which owns the
lock that guards the whole store."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

from conveyor.backends._notify import Notifier
from conveyor.backends.base import NewJob
from conveyor.backends.records import present_workers
from conveyor.backends.stores import STALE_WORKER_KEPT, ScheduleRecord, WorkerInfo, same_turn
from conveyor.job import Job


class MemoryStores:
    """Schedules, locks, cache, worker presence and pauses of `MemoryBackend`."""

    def __init__(self) -> None:
        # One lock for the whole store, jobs included: a schedule's tick
        # enqueues its jobs under it too.
        self._lock = threading.RLock()
        self._notifier = Notifier()
        self._schedules: dict[str, ScheduleRecord] = {}
        self._locks: dict[str, tuple[str, float]] = {}  # key -> (token, expires)
        self._cache: dict[str, tuple[str, float | None]] = {}  # key -> (json, expires)
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}  # id -> (info, expires)
        self._paused: set[str] = set()

    def _insert(self, jobs: Sequence[NewJob], now: float) -> list[Job]:
        """Store jobs; the caller holds self._lock (MemoryBackend's)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- schedules

    async def schedule_put(
        self, record: ScheduleRecord, expected: ScheduleRecord | None = None
    ) -> bool:
        with self._lock:
            stored = self._schedules.get(record.name)
            if expected is not None and (stored is None or not same_turn(stored, expected)):
                return False
            self._schedules[record.name] = dataclasses.replace(record)
            return True

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        with self._lock:
            rec = self._schedules.get(name)
            return None if rec is None else dataclasses.replace(rec)

    async def schedule_list(self) -> list[ScheduleRecord]:
        with self._lock:
            return [dataclasses.replace(self._schedules[n]) for n in sorted(self._schedules)]

    async def schedule_delete(self, name: str) -> bool:
        with self._lock:
            return self._schedules.pop(name, None) is not None

    async def schedule_due(self, now: float | None, limit: int) -> list[ScheduleRecord]:
        now = time.time() if now is None else now
        with self._lock:
            due = [r for r in self._schedules.values() if r.enabled and r.next_run <= now]
            due.sort(key=lambda r: r.next_run)
            return [dataclasses.replace(r) for r in due[:limit]]

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        with self._lock:
            rec = self._schedules.get(name)
            if rec is None or not rec.enabled or rec.next_run != expected_next_run:
                return None
            rec.next_run = next_run
            rec.last_run = last_run if last_run is not None else rec.last_run
            rec.last_error = last_error
            out = self._insert(jobs, time.time())
        if jobs:
            self._notifier.notify()
        return out

    # ----------------------------------------------------------------- locks

    async def lock_acquire(
        self, key: str, token: str, ttl: float, now: float | None = None
    ) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            held = self._locks.get(key)
            if held is not None and held[1] > now:
                return False
            self._locks[key] = (token, now + ttl)
            return True

    async def lock_release(self, key: str, token: str) -> bool:
        with self._lock:
            held = self._locks.get(key)
            if held is None or held[0] != token or held[1] <= time.time():
                return False
            del self._locks[key]
            return True

    async def lock_extend(self, key: str, token: str, ttl: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            held = self._locks.get(key)
            if held is None or held[0] != token or held[1] <= now:
                return False
            self._locks[key] = (token, now + ttl)
            return True

    # ----------------------------------------------------------------- cache

    async def cache_get(self, key: str, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry[1] is not None and entry[1] <= now:
                del self._cache[key]
                return None
            return entry[0]

    async def cache_set(
        self, key: str, value: str, ttl: float | None, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._cache[key] = (value, None if ttl is None else now + ttl)

    async def cache_delete(self, key: str) -> bool:
        """True when a live value went (an expired one reads as missing)."""
        now = time.time()
        with self._lock:
            entry = self._cache.pop(key, None)
            return entry is not None and (entry[1] is None or entry[1] > now)

    # ----------------------------------------------------------------- workers

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            # Records of workers that died without saying goodbye go here,
            # once they have been shown as stale for a while.
            forgotten = now - STALE_WORKER_KEPT
            for worker_id in [w for w, (_, ends) in self._workers.items() if ends <= forgotten]:
                del self._workers[worker_id]
            self._workers[info.id] = (dataclasses.replace(info, stale=False), now + ttl)

    async def worker_gone(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    async def workers(
        self, now: float | None = None, *, include_stale: bool = False
    ) -> list[WorkerInfo]:
        now = time.time() if now is None else now
        with self._lock:
            records = [(dataclasses.replace(i), ends) for i, ends in self._workers.values()]
        return present_workers(records, now, include_stale)

    # ----------------------------------------------------------------- pauses

    async def pause_queue(self, queue: str) -> bool:
        with self._lock:
            added = queue not in self._paused
            self._paused.add(queue)
        return added

    async def resume_queue(self, queue: str) -> bool:
        with self._lock:
            removed = queue in self._paused
            self._paused.discard(queue)
        return removed

    async def paused_queues(self) -> set[str]:
        with self._lock:
            return set(self._paused)
