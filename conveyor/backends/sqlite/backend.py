"""`sqlite:///path.db` — a durable queue in one SQLite file, no server.

Several worker and producer processes may share the file. What makes that
safe and fast:

* Every write is one `BEGIN IMMEDIATE` transaction. Taking the write lock up
  front means two connections never both hold a read snapshot and then try to
  upgrade it, which SQLite can only resolve by failing one of them at once
  (SQLITE_BUSY_SNAPSHOT, which the busy timeout does not cover).
* WAL journal with `synchronous=NORMAL`: readers never block the writer and a
  commit costs no fsync (durability is lost only on power failure, not on a
  process crash).
* A claim is one transaction: promote due scheduled jobs, then one
  `UPDATE ... WHERE seq IN (SELECT ... LIMIT n) RETURNING`, index-backed by a
  partial index on queued jobs only. A worker claims by the job names it
  serves: one index range per (queue, name) on `conveyor_jobs_claim_name`,
  so queued jobs of other names cost nothing however many there are.
* Idle workers wake on an in-process `Notifier` (enqueues made through this
  backend object) or, for commits by other connections and processes, on a
  change of `PRAGMA data_version`, polled every 15 ms on a second, read-only
  "watch" connection: it reads the WAL index in shared memory, no disk I/O,
  and only a change costs a real query (is there work for these queues?).
* Recurring schedules, locks and the cache live in three small tables of the
  same file; a schedule's tick fires (compare-and-set on next_run) and
  enqueues its jobs in one transaction.

sqlite3 calls block, so each backend object owns one thread that owns the
connection (`writer.ConnectionThread`); async methods hand it closures
and await a future. The thread serialises all use of the connection, and no
state is tied to an event loop, so the backend serves any number of loops
(the blocking twins run their own). It never blocks on the write lock: a
write that finds it taken is queued for another try a few milliseconds later,
until `busy_timeout` has passed, and heartbeats, acknowledgements and lock
extensions go before every other queued call. So a heartbeat waits for the
lock itself, never for another call's wait for it.

Leases and the write lock. A lease only runs while the database accepts
writes. While some connection holds the write lock without committing (a
process frozen by SIGSTOP, a debugger or a cgroup freezer in mid-transaction,
a process killed in one, a long transaction, a `sqlite3` shell in BEGIN),
no heartbeat can be stored, so expiry then would say nothing about whether a
worker is alive. The rule, applied by every write transaction when it gets
the lock and before it commits (`writer.py`):

* a transaction that held the lock for a time T pushes back, by T, the
  leases that were live when it took the lock; a freeze during its COMMIT
  (after that was measured) is made up for by the same connection right
  after the COMMIT, before any other of its transactions (a lease recovery
  due since before the freeze) can run;
* a transaction whose connection waited for the lock pushes back the leases
  that were live when the stall began, by its length: the stall runs from
  the later of the connection's first refused try and the last write
  recorded in the meta table (each connection records its commit times
  there, at most every 100 ms) until the lock was taken;
* a heartbeat or claim that waited for the lock stores a lease that runs from
  when it is stored, not from the `now` it was called with.

What this tolerates: a stall of any length. What it does not make up for:
stalls shorter than 0.25 s, and the start of a stall before the first
refused try of the connection that gets the lock first after it (at most one
heartbeat interval, as a worker with running jobs writes that often). A live
worker's lease, last renewed at most one interval before the stall, is thus
left with at least a lease minus two heartbeat intervals once the lock is
free: the worker's defaults (an interval is a third of the lease) leave a
third. A stall pushes a dead worker's jobs back too: they are recovered at
most one lease after it ends. One gap is left: if the first write after a
stall comes from a process that did not wait through it (it began writing
within the few milliseconds in which waiters poll), it records a fresh write
time and the stall goes unnoticed, as before this rule.

Clocks: the file must be on a local disk (WAL needs shared memory), so all
processes using it share the host's clock, and there is no skew between
workers to tolerate. A call whose `now` is None reads `time.time()` when it
is made (as the engine's calls do); leases compare such times with each
other. A step of the host's clock forward by more than a lease minus a
heartbeat interval expires live leases, as it would on any backend.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

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
from conveyor.backends.records import by_ids
from conveyor.backends.sqlite import queries
from conveyor.backends.sqlite.migrations import SQLiteMigrations
from conveyor.backends.sqlite.rows import claim_order, logs_json, row_to_job
from conveyor.backends.sqlite.sql import (
    CLAIM_IDS,
    COLS,
    FINISH_COMPLETED,
    FINISH_FINAL,
    FINISH_REQUEUE,
    FINISH_RETRY,
    HEARTBEAT,
    PROGRESS,
    PROMOTE,
    RECOVER,
    RELEASE_DUE,
    RETRY,
    SCHEMA_VERSION,
    TRIM,
    UNCLAIM,
    WITHDRAW,
    claim_sql,
)
from conveyor.backends.sqlite.stores import SQLiteStores
from conveyor.backends.sqlite.writer import waited_for_lock_after, write_transaction
from conveyor.job import Job, JobState

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]

# How often an idle waiter looks at PRAGMA data_version for commits made by
# other connections. Each look is a thread hop and a shared-memory read (tens
# of microseconds), so 15 ms keeps cross-process wake-up latency well under
# 50 ms while an idle worker stays near 0 % CPU.
POLL_INTERVAL: Final = 0.015


class SQLiteBackend(SQLiteStores, SQLiteMigrations):
    """`sqlite:///path.db`: jobs in one SQLite file, shared by any number of processes.

    URL options: `busy_timeout` (milliseconds one call waits for the write
    lock while another connection holds it, before it fails with
    BackendUnavailableError; default 30000) and `synchronous` (`off`,
    `normal` (default), `full`, `extra`), e.g.
    `sqlite:///jobs.db?busy_timeout=10000`.

    Any call opens the backend if it is not open yet; `close()` releases the
    connection and its thread.
    """

    capabilities = Capabilities(recurring=True, locks=True, cache=True)

    # ------------------------------------------------------------ producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        out, inserted = await self._call(self._enqueue, list(jobs), time.time())
        if inserted:
            self._wake()
        return out

    def _enqueue(
        self, conn: sqlite3.Connection, jobs: list[NewJob], now: float
    ) -> tuple[list[Job], int]:
        with write_transaction(conn):
            out, inserted = queries.insert(conn, jobs, now)
        if inserted:
            self._wakeups += 1
        return out, inserted

    # ------------------------------------------------------------ consuming

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
        if limit <= 0 or not queues or (names is not None and not names):
            return []
        token = claim_id if claim_id is not None else os.urandom(12).hex()
        served = None if names is None else tuple(dict.fromkeys(names))
        return await self._call(
            self._claim, tuple(dict.fromkeys(queues)), limit, lease, now, token, served
        )

    def _claim(
        self,
        conn: sqlite3.Connection,
        queues: tuple[str, ...],
        limit: int,
        lease: float,
        now: float,
        token: ClaimToken,
        names: tuple[str, ...] | None = None,
    ) -> list[Job]:
        sql = claim_sql(len(queues), None if names is None else len(names))
        with write_transaction(conn):
            conn.execute(PROMOTE, (now, json.dumps(queues)))
            lease += waited_for_lock_after(conn, now)  # as in _heartbeat
            rows = conn.execute(
                sql, (now, now + lease, limit, token, *queues, *(names or ()))
            ).fetchall()
        rows.sort(key=claim_order)
        jobs = [row_to_job(row) for row in rows]
        for job in jobs:
            job.token = token
        return jobs

    # A broker's store (base.DeliveryStore): the broker delivers job ids.

    async def claim_ids(
        self,
        ids: Sequence[str],
        lease: float,
        now: float | None = None,
        *,
        claim_id: str,
    ) -> list[Job | None]:
        now = time.time() if now is None else now
        if not ids:
            return []
        jobs = await self._call(self._claim_ids, json.dumps(list(ids)), lease, now, claim_id)
        return by_ids(ids, jobs)

    def _claim_ids(
        self, conn: sqlite3.Connection, ids: str, lease: float, now: float, token: ClaimToken
    ) -> list[Job]:
        with write_transaction(conn):
            lease += waited_for_lock_after(conn, now)  # as in _claim
            rows = conn.execute(CLAIM_IDS, (now, now + lease, ids, token)).fetchall()
        jobs = [row_to_job(row) for row in rows]
        for job in jobs:
            job.token = token
        return jobs

    async def withdraw(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        rows = await self._call(queries.write_rows, WITHDRAW, json.dumps(list(ids)))
        return [row[0] for row in rows]

    async def release_due(
        self, queues: Sequence[str], limit: int, now: float | None = None
    ) -> list[Job]:
        now = time.time() if now is None else now
        if limit <= 0 or not queues:
            return []
        queues_json = json.dumps(list(dict.fromkeys(queues)))
        jobs = await self._call(self._release_due, queues_json, limit, now)
        if jobs:
            self._wake()
        return jobs

    def _release_due(
        self, conn: sqlite3.Connection, queues: str, limit: int, now: float
    ) -> list[Job]:
        # One write transaction: a second caller finds these jobs queued.
        with write_transaction(conn):
            rows = conn.execute(RELEASE_DUE, (now, queues, limit)).fetchall()
        if rows:
            self._wakeups += 1
        rows.sort(key=lambda row: (row[11], row[0]))  # (run_at, seq)
        return [row_to_job(row) for row in rows]

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        handed_back = await self._call(self._unclaim, claim_id, now)
        if handed_back:
            self._wake()
        return handed_back

    def _unclaim(self, conn: sqlite3.Connection, claim_id: str, now: float) -> int:
        with write_transaction(conn):
            handed_back: int = conn.execute(UNCLAIM, (now, claim_id)).rowcount
        if handed_back:
            self._wakeups += 1
        return handed_back

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        if not beats:
            return []
        now = time.time() if now is None else now
        return await self._lease_call(self._heartbeat, list(beats), lease, now)

    def _heartbeat(
        self, conn: sqlite3.Connection, beats: list[Heartbeat], lease: float, now: float
    ) -> list[LeaseStatus]:
        statuses: list[LeaseStatus] = []
        params: list[tuple[Any, ...]] = []
        with write_transaction(conn):
            # A heartbeat held up by the write lock stores a lease that runs
            # from when it is stored, not one that ran out while it waited.
            until = now + lease + waited_for_lock_after(conn, now)
            held = queries.running_rows(conn, [beat.job_id for beat in beats])
            for beat in beats:
                row = held.get(beat.job_id)
                # row: (id, seq, token, queue, lease_until, cancel_requested)
                if row is None or row[2] != beat.token or row[4] < now:
                    statuses.append(LeaseStatus.LOST)
                    continue
                params.append((until, logs_json(beat.logs), row[1]))
                statuses.append(LeaseStatus.CANCEL if row[5] else LeaseStatus.HELD)
            if params:
                conn.executemany(HEARTBEAT, params)
        return statuses

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        if not outcomes:
            return []
        accepted, requeued = await self._lease_call(self._finish, list(outcomes), retention)
        if requeued:
            self._wake()
        return accepted

    def _finish(
        self, conn: sqlite3.Connection, outcomes: list[Outcome], retention: Retention
    ) -> tuple[list[bool], bool]:
        accepted: list[bool] = []
        completed: list[tuple[Any, ...]] = []
        final: list[tuple[Any, ...]] = []
        retry: list[tuple[Any, ...]] = []
        requeue: list[tuple[Any, ...]] = []
        trim: dict[tuple[str, str], int] = {}  # (state, queue) -> how many to keep
        keep_completed, keep_failed = retention.keep_completed, retention.keep_failed
        with write_transaction(conn):
            held = queries.running_rows(conn, [out.job_id for out in outcomes])
            for out in outcomes:
                # A second outcome under the same claim in one batch finds the
                # job no longer running, as it would in a later batch; one of
                # an older claim is refused without taking the live one's row.
                row = held.get(out.job_id)
                if row is None or row[2] != out.token:
                    accepted.append(False)
                    continue
                del held[out.job_id]
                accepted.append(True)
                seq, queue, kind, cancel_requested = row[1], row[3], out.kind, row[5]
                if cancel_requested and (
                    kind is OutcomeKind.QUEUED or kind is OutcomeKind.SCHEDULED
                ):
                    kind = OutcomeKind.CANCELLED  # a cancel outlives the attempt
                logs = logs_json(out.logs)
                if kind is OutcomeKind.COMPLETED:
                    completed.append((out.at, out.result, logs, seq))
                    if keep_completed is not None:
                        trim[("completed", queue)] = keep_completed
                elif kind is OutcomeKind.FAILED or kind is OutcomeKind.CANCELLED:
                    error = out.error or ("cancelled" if cancel_requested else None)
                    ended = attempt_outcome(kind, timed_out=out.timed_out).value
                    final.append(
                        # ?1 to ?7, then ?8 the traceback and ?9 the attempt's outcome
                        (
                            kind.value,
                            out.at,
                            out.result,
                            error,
                            out.progress,
                            logs,
                            seq,
                            out.traceback,
                            ended,
                        )
                    )
                    if kind is OutcomeKind.FAILED and keep_failed is not None:
                        trim[("failed", queue)] = keep_failed
                elif kind is OutcomeKind.SCHEDULED:
                    since = out.at  # the caller's clock, for its run_at
                    if out.retry_in is not None:
                        since = time.time()
                        run_at = since + out.retry_in
                    else:
                        run_at = out.run_at if out.run_at is not None else out.at
                    state = "scheduled" if run_at > since else "queued"
                    ended = attempt_outcome(kind, timed_out=out.timed_out).value
                    retry.append(
                        # ?1 to ?6, then ?7 the traceback, ?8 the end and ?9 the outcome
                        (
                            state,
                            run_at,
                            out.error,
                            out.progress,
                            logs,
                            seq,
                            out.traceback,
                            out.at,
                            ended,
                        )
                    )
                else:  # QUEUED
                    requeue.append((out.at, out.progress, logs, seq))
            if completed:
                conn.executemany(FINISH_COMPLETED, completed)
            if final:
                conn.executemany(FINISH_FINAL, final)
            if retry:
                conn.executemany(FINISH_RETRY, retry)
            if requeue:
                conn.executemany(FINISH_REQUEUE, requeue)
            for (state, queue), keep in trim.items():
                conn.execute(TRIM, (state, queue, keep))
        requeued = bool(retry or requeue)
        if requeued:
            self._wakeups += 1
        return accepted, requeued

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        return await self._call(self._progress, job_id, token, progress, logs_json(logs))

    def _progress(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: str | None,
    ) -> bool:
        with write_transaction(conn):
            changed = conn.execute(PROGRESS, (progress, logs, job_id, token)).rowcount
        return changed == 1

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        now = time.time() if now is None else now
        retention = retention or Retention()
        jobs = await self._call(self._recover_expired, now, max_stalled, retention)
        if jobs:
            self._wake()
        return jobs

    def _recover_expired(
        self, conn: sqlite3.Connection, now: float, max_stalled: int, retention: Retention
    ) -> list[Job]:
        with write_transaction(conn):
            rows = conn.execute(RECOVER, (now, max_stalled)).fetchall()
            if retention.keep_failed is not None:
                for queue in {row[3] for row in rows if row[5] == "failed"}:
                    conn.execute(TRIM, ("failed", queue, retention.keep_failed))
        if rows:
            self._wakeups += 1
        rows.sort(key=lambda row: row[0])
        return [row_to_job(row) for row in rows]

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queues_json = json.dumps(list(dict.fromkeys(queues)))
        names_json = None if names is None else json.dumps(list(dict.fromkeys(names)))
        await self._ensure_open()
        # Both read before probing, so a commit that lands after the probe
        # changes one of them and is not missed.
        seen, version = self._wakeups, self._data_version()
        ready, next_run = await self._call(queries.probe, queues_json, names_json)
        while not ready:
            remaining = deadline - loop.time()
            if next_run is not None:
                remaining = min(remaining, next_run - time.time())
            if remaining <= 0:
                return
            if await self._notifier.wait(
                min(remaining, POLL_INTERVAL), ready=functools.partial(self._woken_since, seen)
            ):
                return
            current = self._data_version()
            if current is None or current != version:
                # Some connection committed. Most commits (heartbeats, other
                # workers' finishes) bring no work for these queues: look
                # before waking the caller for nothing.
                seen, version = self._wakeups, current
                ready, next_run = await self._call(queries.probe, queues_json, names_json)

    def _woken_since(self, seen: int) -> bool:
        return self._wakeups != seen

    # ------------------------------------------------------------ inspecting

    async def get(self, job_id: str) -> Job | None:
        return await self._call(self._get_one, "id", job_id)

    async def get_by_key(self, key: str) -> Job | None:
        return await self._call(self._get_one, "key", key)

    @staticmethod
    def _get_one(conn: sqlite3.Connection, column: str, value: str) -> Job | None:
        # `column` is one of two literals above, never user input.
        row = conn.execute(
            f"SELECT {COLS} FROM conveyor_jobs WHERE {column} = ?1", (value,)
        ).fetchone()
        return None if row is None else row_to_job(row)

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        return await self._call(queries.list_jobs, state, name, queue, limit, offset)

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        return await self._call(queries.cancel, job_id, time.time() if now is None else now)

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        job = await self._call(self._retry, job_id, time.time() if now is None else now)
        if job is not None:
            self._wake()
        return job

    def _retry(self, conn: sqlite3.Connection, job_id: str, now: float) -> Job | None:
        with write_transaction(conn):
            row = conn.execute(RETRY, (now, job_id)).fetchone()
        if row is None:
            return None
        self._wakeups += 1
        return row_to_job(row)

    async def stats(self) -> dict[str, dict[str, int]]:
        return await self._call(queries.stats)

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        wanted = [JobState(s).value for s in states if JobState(s) is not JobState.RUNNING]
        if not wanted:
            return 0
        return await self._call(queries.purge, json.dumps(wanted), older_than, queue)
