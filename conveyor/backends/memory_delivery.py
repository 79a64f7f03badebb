"""The memory backend as the store of a broker backend (`base.DeliveryStore`):
claims by job id and the release of due scheduled jobs. `MemoryDelivery`
sits between `MemoryStores` and `MemoryBackend`, which owns the indexes it
works on (see memory.py)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.backends.base import ClaimToken
from conveyor.backends.memory_stores import MemoryStores
from conveyor.job import Job, JobState

if TYPE_CHECKING:
    from conveyor.backends.memory import _Record


class MemoryDelivery(MemoryStores):
    """Claims by id and releases of due jobs of `MemoryBackend`, whose
    `__init__` sets these indexes."""

    _jobs: dict[str, _Record]
    _ready: dict[str, dict[str, list[tuple[int, float, int, str]]]]
    _scheduled: dict[str, list[tuple[float, int, str]]]
    _running: dict[str, _Record]

    def _make_pending(self, rec: _Record, state: JobState) -> None:
        """Put a job in `state` and its index (MemoryBackend's)."""
        raise NotImplementedError

    def _delete(self, rec: _Record) -> None:
        """Forget a job and its key (MemoryBackend's)."""
        raise NotImplementedError

    def _lease(self, rec: _Record, now: float, lease: float, token: ClaimToken) -> Job:
        """Lease a queued job (its ready-heap entry already popped or dropped)
        under `token`; its record, token set. The caller holds self._lock."""
        rec.state = JobState.RUNNING
        rec.attempts += 1
        rec.started_at = now
        rec.lease_until = now + lease
        rec.token = token
        rec.cancel_requested = False
        self._running[rec.id] = rec
        job = rec.snapshot()
        job.token = token
        return job

    def _drop_ready(self, ids: dict[tuple[str, str], set[str]]) -> None:
        """Take the listed jobs ({(queue, name): ids}) out of their ready heaps.
        The caller holds self._lock."""
        for (queue, name), gone in ids.items():
            heap = self._ready.get(queue, {}).get(name)
            if heap:
                heap[:] = [entry for entry in heap if entry[3] not in gone]
                heapq.heapify(heap)

    async def claim_ids(
        self,
        ids: Sequence[str],
        lease: float,
        now: float | None = None,
        *,
        claim_id: str,
    ) -> list[Job | None]:
        now = time.time() if now is None else now
        out: list[Job | None] = []
        taken: dict[tuple[str, str], set[str]] = {}  # (queue, name) -> ids leased
        with self._lock:
            for job_id in ids:
                rec = self._jobs.get(job_id)
                if rec is None or rec.state is not JobState.QUEUED:
                    out.append(None)  # a repeated id finds its job running by now
                    continue
                out.append(self._lease(rec, now, lease, claim_id))
                taken.setdefault((rec.queue, rec.name), set()).add(rec.id)
            # A claim pops what it takes; these were taken from anywhere in
            # their heaps, so their entries go now. Left as stale entries they
            # would never reach the top where no claim pops (a broker's store),
            # and a heap of nothing but stale entries would read as work to
            # wait_for_work. A pass over the heap: this backend is for tests.
            self._drop_ready(taken)
        return out

    async def withdraw(self, ids: Sequence[str]) -> list[str]:
        gone: dict[tuple[str, str], set[str]] = {}  # (queue, name) -> queued ids withdrawn
        removed: list[str] = []
        with self._lock:
            for job_id in dict.fromkeys(ids):
                rec = self._jobs.get(job_id)
                if rec is None or rec.state not in (JobState.QUEUED, JobState.SCHEDULED):
                    continue
                if rec.attempts:  # it went out: it ran
                    continue
                if rec.state is JobState.QUEUED:
                    gone.setdefault((rec.queue, rec.name), set()).add(rec.id)
                self._delete(rec)  # a scheduled heap's entry is stale now (no record)
                removed.append(job_id)
            # Out of the ready heaps at once, as in claim_ids.
            self._drop_ready(gone)
        return removed

    async def release_due(
        self, queues: Sequence[str], limit: int, now: float | None = None
    ) -> list[Job]:
        now = time.time() if now is None else now
        released: list[Job] = []
        with self._lock:
            heaps = [h for q in dict.fromkeys(queues) if (h := self._scheduled.get(q))]
            while len(released) < limit and heaps:
                heap = min(heaps, key=lambda h: h[0])
                if heap[0][0] > now:
                    break  # the earliest head of these queues is not due
                run_at, _, job_id = heapq.heappop(heap)
                if not heap:
                    heaps = [h for h in heaps if h]
                rec = self._jobs.get(job_id)
                if rec is None or rec.state is not JobState.SCHEDULED or rec.run_at != run_at:
                    continue  # a stale entry: the job moved on
                self._make_pending(rec, JobState.QUEUED)
                released.append(rec.snapshot())
        if released:
            self._notifier.notify()
        return released
