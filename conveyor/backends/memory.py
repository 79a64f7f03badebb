"""In-process backend for tests and experiments: everything in dicts and heaps.

It implements the whole contract of `backends.base` (the conformance suite
holds it to account like any other backend), so code tested on `memory://`
behaves the same on a real backend. Nothing survives the process.

A forked child (multiprocessing, a pre-fork server) gets a copy of the store
as it was at the fork: from then on the parent and the child each change their
own copy and see nothing of the other's jobs. Share a real backend between
processes.

Clock: the host's (`time.time()`) wherever a call's `now` is None; every
caller is in this process, so there is no skew to tolerate.

Schedules, locks, the cache and worker presence: memory_stores.py; claims
by id and releases of due jobs (a broker's store): memory_delivery.py.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.backends._notify import Notifier
from conveyor.backends.base import (
    CancelResult,
    Capabilities,
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
    attempt_outcome,
)
from conveyor.backends.memory_delivery import MemoryDelivery
from conveyor.backends.records import stored_entry, stored_job, with_entry
from conveyor.job import (
    FINAL_STATES,
    PENDING_STATES,
    AttemptOutcome,
    InvalidOptionError,
    Job,
    JobState,
)


@dataclass(slots=True)
class _Record:
    seq: int
    id: str
    name: str
    queue: str
    payload: str  # JSON text, decoded per snapshot so callers never share objects
    state: JobState
    priority: int
    max_retries: int
    timeout: float | None
    key: str | None
    created_at: float
    run_at: float
    attempts: int = 0
    result: str | None = None
    error: str | None = None
    progress: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float = 0.0
    token: ClaimToken | None = None  # of the current (or last) claim
    stalls: int = 0
    cancel_requested: bool = False
    final_seq: int = 0  # which entry of the retention ring is current
    logs: list[dict[str, Any]] = field(default_factory=list)
    traceback: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    headers: str | None = None  # JSON text

    def ended(self, outcome: AttemptOutcome, at: float, error: str | None) -> None:
        """Record the end of the current attempt in the history."""
        entry = stored_entry(self.attempts, self.started_at, at, outcome, error)
        self.history = with_entry(self.history, entry)

    def snapshot(self, duplicate: bool = False) -> Job:
        return stored_job(
            id=self.id,
            name=self.name,
            queue=self.queue,
            payload=self.payload,
            state=self.state,
            attempts=self.attempts,
            max_retries=self.max_retries,
            priority=self.priority,
            key=self.key,
            result=self.result,
            error=self.error,
            progress=self.progress,
            created_at=self.created_at,
            run_at=self.run_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            timeout=self.timeout,
            logs=self.logs,
            stalls=self.stalls,
            cancel_requested=self.cancel_requested,
            duplicate=duplicate,
            traceback=self.traceback,
            history=self.history,
            headers=self.headers,
        )


_KEEP_ALL = Retention(keep_completed=None, keep_failed=None)


class MemoryBackend(MemoryDelivery):
    """`memory://` — one store per backend object, shared by every loop using it
    (not across processes: a forked child works on a copy)."""

    capabilities = Capabilities(recurring=True, locks=True, cache=True)

    def __init__(self, url: str = "memory://") -> None:
        rest = url.partition("://")[2]
        if rest.strip("/"):
            # Nothing to configure: a host, a path or an option is a mistake
            # (a typo'd scheme of another backend, say), not to be ignored.
            raise InvalidOptionError(f"{url!r}: memory:// takes no host, path or options")
        self.url = url
        super().__init__()
        self._seq = 0
        self._jobs: dict[str, _Record] = {}
        self._keys: dict[str, str] = {}
        # Heaps hold ids with their sort keys; stale entries (a job that moved
        # on) are skipped when popped, which is cheaper than removing them.
        # Ready jobs have one heap per (queue, job name): a claim looks only at
        # the names it serves, however many jobs of other names wait.
        self._ready: dict[str, dict[str, list[tuple[int, float, int, str]]]] = {}
        self._scheduled: dict[str, list[tuple[float, int, str]]] = {}  # per queue
        self._running: dict[str, _Record] = {}
        # Retention: per (queue, state) a ring of (final_seq, id) in finishing
        # order, and the true count (the ring may hold stale entries of jobs
        # that were retried or purged since).
        self._finished: dict[tuple[str, JobState], deque[tuple[int, str]]] = {}
        self._final_count: dict[tuple[str, JobState], int] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def clock(self) -> float:
        return time.time()

    # The facade's fork hooks: the store's lock is held across the fork, so the
    # child's copy is never taken in the middle of a change.

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        """Fresh locks, and no waiters: theirs are the parent's event loops."""
        self._lock = threading.RLock()
        self._notifier = Notifier()

    # ----------------------------------------------------------------- producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        with self._lock:
            out = self._insert(jobs, time.time())
        self._notifier.notify()
        return out

    def _insert(self, jobs: Sequence[NewJob], now: float) -> list[Job]:
        """Store jobs; the caller holds self._lock."""
        out: list[Job] = []
        for new in jobs:
            if new.key is not None and new.key in self._keys:
                out.append(self._jobs[self._keys[new.key]].snapshot(duplicate=True))
                continue
            self._seq += 1
            rec = _Record(
                seq=self._seq,
                id=new.id,
                name=new.name,
                queue=new.queue,
                payload=new.payload,
                state=JobState.SCHEDULED if new.run_at > now else JobState.QUEUED,
                priority=new.priority,
                max_retries=new.max_retries,
                timeout=new.timeout,
                key=new.key,
                created_at=new.created_at,
                run_at=new.run_at,
                headers=new.headers,
            )
            self._jobs[rec.id] = rec
            if rec.key is not None:
                self._keys[rec.key] = rec.id
            self._make_pending(rec, rec.state)
            out.append(rec.snapshot())
        return out

    def _make_pending(self, rec: _Record, state: JobState) -> None:
        rec.state = state
        if state is JobState.QUEUED:
            heapq.heappush(
                self._ready.setdefault(rec.queue, {}).setdefault(rec.name, []),
                (rec.priority, rec.run_at, rec.seq, rec.id),
            )
        else:
            heapq.heappush(self._scheduled.setdefault(rec.queue, []), (rec.run_at, rec.seq, rec.id))

    # ----------------------------------------------------------------- consuming

    def _promote(self, now: float, queues: Sequence[str]) -> None:
        for queue in queues:
            heap = self._scheduled.get(queue)
            while heap and heap[0][0] <= now:
                run_at, _, job_id = heapq.heappop(heap)
                rec = self._jobs.get(job_id)
                if rec is not None and rec.state is JobState.SCHEDULED and rec.run_at == run_at:
                    self._make_pending(rec, JobState.QUEUED)

    def _ready_heaps(
        self, queues: Sequence[str], names: Sequence[str] | None
    ) -> list[list[tuple[int, float, int, str]]]:
        """The non-empty ready heaps of these queues and job names."""
        heaps = []
        for queue in queues:
            by_name = self._ready.get(queue)
            if not by_name:
                continue
            if names is None:
                heaps += [h for h in by_name.values() if h]
            else:
                heaps += [h for name in names if (h := by_name.get(name))]
        return heaps

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        now = time.time() if now is None else now
        token = claim_id if claim_id is not None else os.urandom(12).hex()
        claimed: list[Job] = []
        with self._lock:
            self._promote(now, queues)
            heaps = self._ready_heaps(list(dict.fromkeys(queues)), names)
            while len(claimed) < limit and heaps:
                heap = min(heaps, key=lambda h: h[0]) if len(heaps) > 1 else heaps[0]
                priority, run_at, _, job_id = heapq.heappop(heap)
                if not heap:
                    heaps.remove(heap)
                rec = self._jobs.get(job_id)
                if (
                    rec is None
                    or rec.state is not JobState.QUEUED
                    or rec.priority != priority
                    or rec.run_at != run_at
                ):
                    continue
                claimed.append(self._lease(rec, now, lease, token))
        return claimed

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            lost = [r for r in self._running.values() if r.token == claim_id]
            for rec in lost:
                del self._running[rec.id]
                self._hand_back(rec, now)
        if lost:
            self._notifier.notify()
        return len(lost)

    def _hand_back(self, rec: _Record, at: float) -> None:
        """A running job (already out of `_running`) back to the queue with its
        attempt uncounted; a requested cancel ends it instead."""
        if rec.cancel_requested:
            rec.ended(AttemptOutcome.CANCELLED, at, None)
            rec.error = "cancelled"
            self._finalize(rec, JobState.CANCELLED, at, _KEEP_ALL)
            return
        rec.ended(AttemptOutcome.HANDED_BACK, at, None)
        rec.attempts -= 1
        rec.started_at = None
        rec.run_at = at
        self._make_pending(rec, JobState.QUEUED)

    def _held(self, job_id: str, token: ClaimToken) -> _Record | None:
        rec = self._running.get(job_id)
        if rec is None or rec.token != token:
            return None
        return rec

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        now = time.time() if now is None else now
        statuses: list[LeaseStatus] = []
        with self._lock:
            for beat in beats:
                rec = self._held(beat.job_id, beat.token)
                if rec is None or rec.lease_until < now:
                    statuses.append(LeaseStatus.LOST)
                    continue
                rec.lease_until = now + lease
                rec.logs.extend(beat.logs)
                statuses.append(LeaseStatus.CANCEL if rec.cancel_requested else LeaseStatus.HELD)
        return statuses

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        accepted: list[bool] = []
        requeued = False
        with self._lock:
            for out in outcomes:
                rec = self._held(out.job_id, out.token)
                if rec is None:
                    accepted.append(False)
                    continue
                del self._running[rec.id]
                rec.logs.extend(out.logs)
                if out.progress is not None:
                    rec.progress = out.progress
                kind = out.kind
                if rec.cancel_requested and kind in (OutcomeKind.QUEUED, OutcomeKind.SCHEDULED):
                    kind = OutcomeKind.CANCELLED  # a cancel outlives the attempt
                if kind is OutcomeKind.QUEUED:
                    self._hand_back(rec, out.at)
                    requeued = True
                    accepted.append(True)
                    continue
                error = out.error
                if kind is OutcomeKind.COMPLETED:
                    error = None
                elif kind is OutcomeKind.CANCELLED:
                    error = error or ("cancelled" if rec.cancel_requested else None)
                else:
                    rec.traceback = out.traceback
                rec.ended(attempt_outcome(kind, timed_out=out.timed_out), out.at, error)
                if kind is OutcomeKind.SCHEDULED:
                    rec.error = out.error
                    since = out.at  # the caller's clock, for its run_at
                    if out.retry_in is not None:
                        since = time.time()
                        rec.run_at = since + out.retry_in
                    else:
                        rec.run_at = out.run_at if out.run_at is not None else out.at
                    self._make_pending(
                        rec, JobState.SCHEDULED if rec.run_at > since else JobState.QUEUED
                    )
                    requeued = True
                else:
                    if kind is OutcomeKind.COMPLETED:
                        rec.result = out.result
                        rec.error = None
                        rec.traceback = None
                        rec.progress = 100.0
                    else:
                        rec.error = error
                        rec.result = out.result
                    self._finalize(rec, JobState(kind.value), out.at, retention)
                accepted.append(True)
        if requeued:
            self._notifier.notify()
        return accepted

    def _finalize(self, rec: _Record, state: JobState, at: float, retention: Retention) -> None:
        """Move a job into a final state and trim what retention no longer keeps."""
        rec.state = state
        rec.finished_at = at
        keep = {
            JobState.COMPLETED: retention.keep_completed,
            JobState.FAILED: retention.keep_failed,
        }.get(state)
        slot = (rec.queue, state)
        self._seq += 1
        rec.final_seq = self._seq
        ring = self._finished.setdefault(slot, deque())
        ring.append((rec.final_seq, rec.id))
        self._final_count[slot] = self._final_count.get(slot, 0) + 1
        if keep is None:
            return
        while self._final_count[slot] > keep and ring:
            seq, job_id = ring.popleft()
            old = self._jobs.get(job_id)
            if old is not None and old.state is state and old.final_seq == seq:
                self._delete(old)

    def _leave_final(self, rec: _Record) -> None:
        """Bookkeeping for a job leaving a final state (retry, purge)."""
        slot = (rec.queue, rec.state)
        if slot in self._final_count:
            self._final_count[slot] -= 1
        rec.final_seq = 0

    def _delete(self, rec: _Record) -> None:
        if rec.state in FINAL_STATES:
            self._leave_final(rec)
        del self._jobs[rec.id]
        if rec.key is not None and self._keys.get(rec.key) == rec.id:
            del self._keys[rec.key]

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        with self._lock:
            rec = self._held(job_id, token)
            if rec is None:
                return False
            if progress is not None:
                rec.progress = progress
            rec.logs.extend(logs)
            return True

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        now = time.time() if now is None else now
        retention = retention or Retention()
        recovered: list[Job] = []
        with self._lock:
            for rec in [r for r in self._running.values() if r.lease_until < now]:
                del self._running[rec.id]
                rec.stalls += 1
                stalled = f"lease expired at attempt {rec.attempts} (worker lost)"
                rec.ended(AttemptOutcome.STALLED, now, stalled)
                if rec.cancel_requested:
                    rec.error = "cancelled"
                    self._finalize(rec, JobState.CANCELLED, now, retention)
                elif rec.stalls > max_stalled:
                    self._finalize(rec, JobState.FAILED, now, retention)
                    rec.error = (
                        f"lease expired {rec.stalls} times (worker lost); "
                        f"max_stalled is {max_stalled}"
                    )
                else:
                    rec.run_at = now
                    rec.started_at = None
                    self._make_pending(rec, JobState.QUEUED)
                recovered.append(rec.snapshot())
        if recovered:
            self._notifier.notify()
        return recovered

    def _next_due(self, queues: Sequence[str]) -> float | None:
        heads = [h[0][0] for q in queues if (h := self._scheduled.get(q))]
        return min(heads) if heads else None

    def _has_due_work(self, queues: Sequence[str], names: Sequence[str] | None) -> bool:
        with self._lock:
            due = self._next_due(queues)
            if due is not None and due <= time.time():
                return True
            return bool(self._ready_heaps(queues, names))

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        with self._lock:
            due = self._next_due(queues)
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.time()))
        await self._notifier.wait(timeout, ready=lambda: self._has_due_work(queues, names))

    # ----------------------------------------------------------------- inspecting

    async def get(self, job_id: str) -> Job | None:
        with self._lock:
            rec = self._jobs.get(job_id)
            return None if rec is None else rec.snapshot()

    async def get_by_key(self, key: str) -> Job | None:
        with self._lock:
            job_id = self._keys.get(key)
            return None if job_id is None else self._jobs[job_id].snapshot()

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        with self._lock:
            recs = [
                r
                for r in self._jobs.values()
                if (state is None or r.state is state)
                and (name is None or r.name == name)
                and (queue is None or r.queue == queue)
            ]
            recs.sort(key=lambda r: r.seq, reverse=True)
            return [r.snapshot() for r in recs[offset : offset + limit]]

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        now = time.time() if now is None else now
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                return CancelResult.NOT_FOUND
            if rec.state in FINAL_STATES:
                return CancelResult.FINAL
            if rec.state is JobState.RUNNING:
                rec.cancel_requested = True
                return CancelResult.REQUESTED
            rec.error = "cancelled"
            self._finalize(rec, JobState.CANCELLED, now, _KEEP_ALL)
            return CancelResult.CANCELLED

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        now = time.time() if now is None else now
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None or rec.state not in (JobState.FAILED, JobState.CANCELLED):
                return None
            # A failed job gets exactly one more attempt; a cancelled one
            # resumes with what was left of its retries (at least one attempt).
            if rec.state is JobState.FAILED:
                rec.max_retries = rec.attempts
            else:
                rec.max_retries = max(rec.max_retries, rec.attempts)
            self._leave_final(rec)
            rec.run_at = now
            rec.finished_at = None
            rec.stalls = 0
            self._make_pending(rec, JobState.QUEUED)
            job = rec.snapshot()
        self._notifier.notify()
        return job

    async def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for rec in self._jobs.values():
                counts = out.setdefault(rec.queue, {s.value: 0 for s in JobState})
                counts[rec.state.value] += 1
        return out

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        wanted = set(states) - {JobState.RUNNING}
        removed = 0
        with self._lock:
            for rec in list(self._jobs.values()):
                if rec.state not in wanted or (queue is not None and rec.queue != queue):
                    continue
                stamp = rec.created_at if rec.state in PENDING_STATES else rec.finished_at
                if older_than is not None and (stamp is None or stamp >= older_than):
                    continue
                if rec.state in PENDING_STATES:
                    rec.state = JobState.CANCELLED  # makes heap entries stale
                self._delete(rec)
                removed += 1
        return removed

    # ----------------------------------------------------------------- workers

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for rec in self._jobs.values():
                if rec.state is JobState.QUEUED:
                    counts = out.setdefault(rec.queue, {})
                    counts[rec.name] = counts.get(rec.name, 0) + 1
        return out
