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
  leases that were live when it took the lock;
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
processes using it share one clock; leases compare the callers' `now`
(`time.time()`) with each other, and there is no skew between workers to
tolerate. A step of the host's clock forward by more than a lease minus a
heartbeat interval expires live leases, as it would on any backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor._sync import leave_alone
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
    ScheduleRecord,
    WorkerInfo,
)
from conveyor.backends.sqlite.writer import (
    ConnectionThread,
    Lane,
    LockAwareConnection,
    waited_for_lock_after,
    write_transaction,
)
from conveyor.job import (
    BackendUnavailableError,
    InvalidOptionError,
    Job,
    JobState,
    utc,
)

logger = logging.getLogger("conveyor.sqlite")

P = ParamSpec("P")
T = TypeVar("T")

# 2: the claim token column (see _UPGRADES). A database at a newer version
# than this code knows is refused, so old workers cannot open an upgraded file.
SCHEMA_VERSION: Final = 2

# How often an idle waiter looks at PRAGMA data_version for commits made by
# other connections. Each look is a thread hop and a shared-memory read (tens
# of microseconds), so 15 ms keeps cross-process wake-up latency well under
# 50 ms while an idle worker stays near 0 % CPU.
POLL_INTERVAL: Final = 0.015

# How long a fork waits for the connection thread to finish the call it runs
# (a call never waits for the write lock inside the thread, so this is short).
_FORK_PARK_WAIT: Final = 30.0

# Above this many queues the per-queue UNION ALL claim (each branch an index
# range scan) would be too long a statement; fall back to one IN-list scan.
_MAX_UNION_QUEUES: Final = 32
# The same for a claim by job names: one branch per (queue, name) pair. Below
# SQLite's limit of 500 terms in a compound SELECT.
_MAX_UNION_PAIRS: Final = 256

_SYNCHRONOUS: Final = frozenset({"off", "normal", "full", "extra"})

_SCHEMA: Final = """
CREATE TABLE conveyor_jobs (
    seq              INTEGER PRIMARY KEY,   -- enqueue order (FIFO tie-break)
    id               TEXT NOT NULL UNIQUE,
    name             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    payload          TEXT NOT NULL,         -- JSON text
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    max_retries      INTEGER NOT NULL,
    timeout          REAL,
    key              TEXT,
    created_at       REAL NOT NULL,
    run_at           REAL NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    result           TEXT,                  -- JSON text
    error            TEXT,
    progress         REAL NOT NULL DEFAULT 0,
    started_at       REAL,
    finished_at      REAL,
    lease_until      REAL NOT NULL DEFAULT 0,
    stalls           INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    logs             TEXT NOT NULL DEFAULT '[]',  -- JSON array
    token            TEXT   -- the fencing token of the current (or last) claim
);
-- Partial indexes hold only the rows each hot query looks at, so they stay
-- small and an insert touches few of them. The rowid (seq) ends every index,
-- which makes "ORDER BY priority, run_at, seq" an index walk.
CREATE INDEX conveyor_jobs_claim ON conveyor_jobs (queue, priority, run_at)
    WHERE state = 'queued';
CREATE INDEX conveyor_jobs_due ON conveyor_jobs (run_at) WHERE state = 'scheduled';
CREATE UNIQUE INDEX conveyor_jobs_key ON conveyor_jobs (key) WHERE key IS NOT NULL;
-- stats, list by state, retention, purge, and the running jobs (few: bounded
-- by worker concurrency) that recover_expired scans.
CREATE INDEX conveyor_jobs_state ON conveyor_jobs (state, queue, finished_at);

CREATE TABLE conveyor_schedules (
    name          TEXT PRIMARY KEY,
    job_name      TEXT NOT NULL,
    payload       TEXT NOT NULL,
    cron          TEXT,
    every         REAL,
    tz            TEXT NOT NULL,
    key           TEXT,
    enabled       INTEGER NOT NULL,
    next_run      REAL NOT NULL,   -- the compare-and-set field of schedule_fire
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    last_run      REAL,
    last_error    TEXT,
    catch_up      TEXT NOT NULL,
    max_catch_up  INTEGER NOT NULL,
    misfire_grace REAL NOT NULL,
    options       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX conveyor_schedules_due ON conveyor_schedules (next_run) WHERE enabled;
CREATE TABLE conveyor_locks (
    key     TEXT PRIMARY KEY,
    token   TEXT NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE conveyor_cache (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,   -- JSON text
    expires REAL             -- NULL: never
) WITHOUT ROWID;
"""

# Statements that bring a database of version N - 1 to version N (index N - 2).
_UPGRADES: Final = (
    # 2: fencing by a claim token that never repeats, where the attempt count
    # (lowered again by a hand-back) did. Running jobs get no token, so their
    # claims made by older code are fenced off and come back by lease expiry.
    ("ALTER TABLE conveyor_jobs ADD COLUMN token TEXT",),
)

# Added since schema version 1 was first released, created on open when
# missing; an older conveyor sharing the file is not disturbed by them.
_SCHEMA_ADDITIONS: Final = (
    # Claims by job name (the worker's): one range per (queue, name), in
    # claim order. The older conveyor_jobs_claim still serves claims of any
    # name (admin and test callers, and workers of an older release).
    "CREATE INDEX IF NOT EXISTS conveyor_jobs_claim_name"
    " ON conveyor_jobs (queue, name, priority, run_at) WHERE state = 'queued'",
    # Worker presence: a row per live worker, renewed every few seconds.
    "CREATE TABLE IF NOT EXISTS conveyor_workers ("
    " id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,"
    " queues TEXT NOT NULL, names TEXT NOT NULL,"  # JSON arrays
    " started_at REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL"
    ") WITHOUT ROWID",
)

_COLS: Final = (
    "seq, id, name, queue, payload, state, priority, max_retries, timeout, key, created_at,"
    " run_at, attempts, result, error, progress, started_at, finished_at, stalls,"
    " cancel_requested, logs"
)

_INSERT: Final = (
    "INSERT INTO conveyor_jobs (id, name, queue, payload, state, priority, max_retries,"
    " timeout, key, created_at, run_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_BY_KEYS: Final = (
    f"SELECT {_COLS} FROM conveyor_jobs WHERE key IN (SELECT value FROM json_each(?1))"
)
# INDEXED BY / unary +: with no ANALYZE statistics the planner prefers the
# equality on conveyor_jobs_state, which would walk every scheduled (or
# running) job instead of a run_at range (or one id lookup per job).
_PROMOTE: Final = (
    "UPDATE conveyor_jobs INDEXED BY conveyor_jobs_due SET state = 'queued'"
    " WHERE state = 'scheduled' AND run_at <= ?1"
    " AND queue IN (SELECT value FROM json_each(?2))"
)
# One parameter holding a JSON array keeps a single cached statement for every
# batch size, where "IN (?, ?, ...)" would compile a new one per size.
_SELECT_RUNNING: Final = (
    "SELECT id, seq, token, queue, lease_until, cancel_requested FROM conveyor_jobs"
    " WHERE id IN (SELECT value FROM json_each(?1)) AND +state = 'running'"
)

# Appends a JSON array of log entries (?N, or NULL for none) to the stored
# array by splicing text, which avoids parsing the stored logs at all.
_APPEND_LOGS: Final = (
    "logs = CASE WHEN {p} IS NULL THEN logs WHEN logs = '[]' THEN {p}"
    " ELSE substr(logs, 1, length(logs) - 1) || ',' || substr({p}, 2) END"
)

_HEARTBEAT: Final = (
    f"UPDATE conveyor_jobs SET lease_until = ?1, {_APPEND_LOGS.format(p='?2')} WHERE seq = ?3"
)
_FINISH_COMPLETED: Final = (
    "UPDATE conveyor_jobs SET state = 'completed', finished_at = ?1, result = ?2, error = NULL,"
    f" progress = 100.0, {_APPEND_LOGS.format(p='?3')} WHERE seq = ?4"
)
# FAILED and CANCELLED: final, error and result as reported.
_FINISH_FINAL: Final = (
    "UPDATE conveyor_jobs SET state = ?1, finished_at = ?2, result = ?3, error = ?4,"
    f" progress = coalesce(?5, progress), {_APPEND_LOGS.format(p='?6')} WHERE seq = ?7"
)
# SCHEDULED: a retry; the state (scheduled or, if already due, queued) is
# decided in Python.
_FINISH_RETRY: Final = (
    "UPDATE conveyor_jobs SET state = ?1, run_at = ?2, error = ?3,"
    f" progress = coalesce(?4, progress), {_APPEND_LOGS.format(p='?5')} WHERE seq = ?6"
)
# QUEUED: handed back at shutdown, so this attempt does not count.
_FINISH_REQUEUE: Final = (
    "UPDATE conveyor_jobs SET state = 'queued', attempts = attempts - 1, started_at = NULL,"
    f" run_at = ?1, progress = coalesce(?2, progress), {_APPEND_LOGS.format(p='?3')}"
    " WHERE seq = ?4"
)
# Keeps the newest `?3` final jobs of one (state, queue); the state index
# yields them in (finished_at, seq) order, so this walks the index only.
_TRIM: Final = (
    "DELETE FROM conveyor_jobs WHERE seq IN (SELECT seq FROM conveyor_jobs"
    " WHERE state = ?1 AND queue = ?2 ORDER BY finished_at DESC, seq DESC LIMIT -1 OFFSET ?3)"
)
_PROGRESS: Final = (
    "UPDATE conveyor_jobs SET progress = coalesce(?1, progress),"
    f" {_APPEND_LOGS.format(p='?2')}"
    " WHERE id = ?3 AND state = 'running' AND token = ?4"
)
# A claim whose reply was lost: its jobs go back as if handed back (attempt
# not counted), a cancel-requested one ends cancelled, as in _finish. The
# running jobs are few (bounded by worker concurrency), found by the state index.
_UNCLAIM: Final = """
UPDATE conveyor_jobs SET
    state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END,
    started_at = CASE WHEN cancel_requested THEN started_at ELSE NULL END,
    run_at = CASE WHEN cancel_requested THEN run_at ELSE ?1 END,
    finished_at = CASE WHEN cancel_requested THEN ?1 ELSE finished_at END,
    error = CASE WHEN cancel_requested THEN 'cancelled' ELSE error END
WHERE state = 'running' AND token = ?2
"""
# Column references on the right of SET see the old row, so `stalls + 1` is
# the new stall count everywhere below. A job whose cancel was requested is
# not run again: it ends cancelled.
_RECOVER: Final = f"""
UPDATE conveyor_jobs SET
    stalls = stalls + 1,
    state = CASE WHEN cancel_requested THEN 'cancelled'
                 WHEN stalls + 1 > ?2 THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested OR stalls + 1 > ?2 THEN ?1 ELSE finished_at END,
    error = CASE WHEN cancel_requested THEN 'cancelled'
                 WHEN stalls + 1 > ?2 THEN 'lease expired ' || (stalls + 1)
                      || ' times (worker lost); max_stalled is ' || ?2
                 ELSE error END,
    run_at = CASE WHEN cancel_requested OR stalls + 1 > ?2 THEN run_at ELSE ?1 END,
    started_at = CASE WHEN cancel_requested OR stalls + 1 > ?2 THEN started_at ELSE NULL END
WHERE state = 'running' AND lease_until < ?1
RETURNING {_COLS}
"""
# A failed job gets exactly one more attempt; a cancelled one resumes with
# what was left of its retries (at least one attempt).
_RETRY: Final = (
    "UPDATE conveyor_jobs SET state = 'queued', max_retries = CASE state"
    " WHEN 'failed' THEN attempts ELSE max(max_retries, attempts) END,"
    " run_at = ?1, finished_at = NULL, stalls = 0"
    f" WHERE id = ?2 AND state IN ('failed', 'cancelled') RETURNING {_COLS}"
)
_PURGE: Final = """
DELETE FROM conveyor_jobs
WHERE state IN (SELECT value FROM json_each(?1)) AND state != 'running'
  AND (?2 IS NULL OR queue = ?2)
  AND (?3 IS NULL
       OR (CASE WHEN state IN ('scheduled', 'queued') THEN created_at ELSE finished_at END) < ?3)
"""

# In ScheduleRecord's field order (a test holds the two together).
_SCHEDULE_COLS: Final = (
    "name, job_name, payload, cron, every, tz, key, enabled, next_run, created_at, updated_at,"
    " last_run, last_error, catch_up, max_catch_up, misfire_grace, options"
)
_SCHEDULE_PUT: Final = (
    f"INSERT OR REPLACE INTO conveyor_schedules ({_SCHEDULE_COLS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SCHEDULE_FIRE: Final = (
    "UPDATE conveyor_schedules SET next_run = ?1, last_run = coalesce(?2, last_run),"
    " last_error = ?3 WHERE name = ?4 AND enabled AND next_run = ?5"
)
# Takes the lock when it is free or expired: the upsert's WHERE leaves a
# live holder's row alone, and then no row changes.
_LOCK_ACQUIRE: Final = (
    "INSERT INTO conveyor_locks (key, token, expires) VALUES (?1, ?2, ?3 + ?4)"
    " ON CONFLICT (key) DO UPDATE SET token = excluded.token, expires = excluded.expires"
    " WHERE conveyor_locks.expires <= ?3"
)
_CACHE_SET: Final = (
    "INSERT INTO conveyor_cache (key, value, expires) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"
)

_STATES: Final = {s.value: s for s in JobState}


def _job(row: Sequence[Any], duplicate: bool = False) -> Job:
    """A `Job` record from a row selected as `_COLS`."""
    (
        _seq,
        job_id,
        name,
        queue,
        payload,
        state,
        priority,
        max_retries,
        timeout,
        key,
        created_at,
        run_at,
        attempts,
        result,
        error,
        progress,
        started_at,
        finished_at,
        stalls,
        cancel_requested,
        logs,
    ) = row
    return Job(
        id=job_id,
        name=name,
        queue=queue,
        payload=json.loads(payload),
        state=_STATES[state],
        attempts=attempts,
        max_retries=max_retries,
        priority=priority,
        key=key,
        result=None if result is None else json.loads(result),
        error=error,
        progress=progress,
        created_at=utc(created_at),
        run_at=utc(run_at),
        started_at=utc(started_at),
        finished_at=utc(finished_at),
        timeout=timeout,
        logs=[] if logs == "[]" else json.loads(logs),
        stalls=stalls,
        cancel_requested=bool(cancel_requested),
        duplicate=duplicate,
    )


def _new_job(new: NewJob, state: JobState, duplicate: bool = False) -> Job:
    """The record of a job just inserted, built without reading it back."""
    created_at = utc(new.created_at)
    return Job(
        id=new.id,
        name=new.name,
        queue=new.queue,
        payload=json.loads(new.payload),
        state=state,
        max_retries=new.max_retries,
        priority=new.priority,
        key=new.key,
        created_at=created_at,
        # Most jobs run as soon as they are created: one datetime serves both.
        run_at=created_at if new.run_at == new.created_at else utc(new.run_at),
        timeout=new.timeout,
        duplicate=duplicate,
    )


def _sort_key(row: Sequence[Any]) -> tuple[int, float, int]:
    # (priority, run_at, seq): RETURNING yields rows in no promised order.
    return (row[6], row[11], row[0])


def _logs_json(logs: Sequence[dict[str, Any]]) -> str | None:
    # default=str: a stray datetime in a log field must not fail the whole
    # finish/heartbeat batch it rides in.
    return json.dumps(logs, default=str) if logs else None


@functools.lru_cache(maxsize=64)
def _claim_sql(n_queues: int, n_names: int | None = None) -> str:
    """The claim statement for `n_queues` queues and `n_names` job names
    (None: any name).

    Parameters: ?1 started_at, ?2 lease_until, ?3 limit, ?4 the claim token,
    ?5... the queues, then the names. One index range scan per queue (or per
    queue and name), each stopping after `limit` rows, then a merge of at most
    n * limit rows: never a sort of the whole backlog.
    """
    order = "ORDER BY priority, run_at, seq"
    if n_names is not None:
        pick = _pick_by_name(n_queues, n_names, order)
    elif n_queues == 1:
        pick = (
            "SELECT seq FROM conveyor_jobs INDEXED BY conveyor_jobs_claim"
            f" WHERE state = 'queued' AND queue = ?5 {order} LIMIT ?3"
        )
    elif n_queues <= _MAX_UNION_QUEUES:
        branches = " UNION ALL ".join(
            "SELECT * FROM (SELECT seq, priority, run_at"
            " FROM conveyor_jobs INDEXED BY conveyor_jobs_claim"
            f" WHERE state = 'queued' AND queue = ?{i + 5} {order} LIMIT ?3)"
            for i in range(n_queues)
        )
        pick = f"SELECT seq FROM ({branches}) {order} LIMIT ?3"
    else:
        marks = ", ".join(f"?{i + 5}" for i in range(n_queues))
        pick = (
            f"SELECT seq FROM conveyor_jobs WHERE state = 'queued' AND queue IN ({marks})"
            f" {order} LIMIT ?3"
        )
    return (
        "UPDATE conveyor_jobs SET state = 'running', attempts = attempts + 1, started_at = ?1,"
        f" lease_until = ?2, token = ?4, cancel_requested = 0 WHERE seq IN ({pick})"
        f" RETURNING {_COLS}"
    )


def _pick_by_name(n_queues: int, n_names: int, order: str) -> str:
    """The SELECT of a claim by name (see _claim_sql): the jobs of names other
    than these are never read, so any number of them waiting costs nothing."""
    pairs = [(f"?{5 + q}", f"?{5 + n_queues + n}") for q in range(n_queues) for n in range(n_names)]
    source = "conveyor_jobs INDEXED BY conveyor_jobs_claim_name WHERE state = 'queued'"
    if len(pairs) == 1:
        queue, name = pairs[0]
        return f"SELECT seq FROM {source} AND queue = {queue} AND name = {name} {order} LIMIT ?3"
    if len(pairs) <= _MAX_UNION_PAIRS:
        branches = " UNION ALL ".join(
            f"SELECT * FROM (SELECT seq, priority, run_at FROM {source}"
            f" AND queue = {queue} AND name = {name} {order} LIMIT ?3)"
            for queue, name in pairs
        )
        return f"SELECT seq FROM ({branches}) {order} LIMIT ?3"
    # Too many pairs for one statement: one scan over the served jobs (the
    # names' ranges of the index), sorted. Still blind to other names.
    queues = ", ".join(f"?{5 + q}" for q in range(n_queues))
    names = ", ".join(f"?{5 + n_queues + n}" for n in range(n_names))
    return (
        f"SELECT seq FROM {source} AND queue IN ({queues}) AND name IN ({names}) {order} LIMIT ?3"
    )


# One write transaction (BEGIN IMMEDIATE ... COMMIT) that also makes up for
# any stall of the write lock: see the module docstring.
_write = write_transaction


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    """The database path (absolute) and the query options of a sqlite:// URL."""
    parts = urlsplit(url)
    hint = "use sqlite:///relative/path.db (three slashes) or sqlite:////absolute/path.db (four)"
    if parts.scheme.lower() != "sqlite":
        raise InvalidOptionError(f"not a sqlite:// URL: {url!r}")
    if parts.netloc:
        if parts.netloc == ":memory:":
            raise InvalidOptionError(
                f"{url!r}: an in-memory SQLite database is not supported; use memory:// instead"
            )
        raise InvalidOptionError(f"{url!r} names a host, but SQLite is a local file; {hint}")
    path = unquote(parts.path[1:])  # the slash after the empty host is not part of the path
    if not path:
        raise InvalidOptionError(f"{url!r} has no database file path; {hint}")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        options[name.lower()] = value
    return os.path.abspath(path), options


class SQLiteBackend:
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

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = _parse_url(url)
        self._busy_timeout_ms = 30_000
        self._synchronous = "normal"
        for name, value in options.items():
            if name == "busy_timeout":
                try:
                    self._busy_timeout_ms = int(value)
                except ValueError:
                    self._busy_timeout_ms = -1
                if self._busy_timeout_ms < 0:
                    raise InvalidOptionError(
                        f"{url!r}: busy_timeout must be a whole number of milliseconds >= 0"
                    )
            elif name == "synchronous":
                if value.lower() not in _SYNCHRONOUS:
                    raise InvalidOptionError(
                        f"{url!r}: synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}"
                    )
                self._synchronous = value.lower()
            else:
                raise InvalidOptionError(
                    f"{url!r}: unknown option {name!r} (known: busy_timeout, synchronous)"
                )
        self._notifier = Notifier()
        self._state_lock = threading.Lock()
        self._thread: ConnectionThread | None = None
        self._opened: Future[None] | None = None
        # Owned by the backend thread: a counter bumped after every commit
        # that makes work available, which lets a waiter see a wake-up that
        # raced ahead of its registration.
        self._wakeups = 0
        # Used from event-loop threads, hence the lock.
        self._watch_lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.url!r})"

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        with self._state_lock:
            if self._opened is None:
                self._thread = ConnectionThread(
                    "conveyor-sqlite", f"SQLite database {self.path}", self._busy_timeout_ms / 1000
                )
                self._opened = self._thread.start(self._connect)
            opened, thread = self._opened, self._thread
        try:
            await asyncio.wrap_future(opened)
        except Exception:
            # Leave the backend closed, so a later call tries afresh. (A
            # cancelled caller is not a failure: the open goes on, and the
            # next call waits for the same future.)
            with self._state_lock:
                if self._opened is opened:
                    self._opened = self._thread = None
            if thread is not None:
                thread.stop(None)
                thread.join()  # idle now: a quick join, no thread left behind
            raise

    async def close(self) -> None:
        with self._state_lock:
            thread, self._thread, self._opened = self._thread, None, None
        if thread is None:
            return
        # Queued calls (from any loop) run first; then the connection closes.
        await asyncio.wrap_future(thread.stop(self._disconnect))
        thread.join()  # the thread is ending by now: a quick join

    def _connect(self) -> LockAwareConnection:
        path = self.path
        if os.path.isdir(path):
            raise self._unavailable("the path is a directory")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            reason = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise self._unavailable(f"directory {parent} {reason}")
        existed = os.path.exists(path)
        if existed and not os.access(path, os.R_OK | os.W_OK):
            raise self._unavailable("permission denied (the file must be readable and writable)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise self._unavailable(
                f"directory {parent} is not writable (SQLite keeps its -wal and -shm files there)"
            )
        conn: LockAwareConnection | None = None
        try:
            # mode=rw for an existing file: never silently replace a file that
            # vanished in the meantime with an empty database.
            mode = "rw" if existed else "rwc"
            uri = f"file:{_quote_path(path)}?mode={mode}"
            conn = sqlite3.connect(
                uri,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=0,
                factory=LockAwareConnection,
            )
            # While opening, SQLite's own busy handler waits for the lock (no
            # other call can run before the connection exists); afterwards
            # the thread waits for it without blocking (writer.py).
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._create_schema(conn)
            conn.execute("PRAGMA busy_timeout = 0")
            # A second connection only for PRAGMA data_version (see
            # _data_version); it never writes and never waits for a lock.
            watch = sqlite3.connect(
                f"file:{_quote_path(path)}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=0,
            )
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if not existed:
                _remove_created(path)
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._unavailable(_explain(exc)) from exc
            raise
        with self._watch_lock:
            self._watch = watch
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with _write(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS conveyor_meta"
                " (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = conn.execute(
                "SELECT value FROM conveyor_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO conveyor_meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise self._unavailable(
                    f"schema version {row[0]} was written by a newer conveyor;"
                    f" this one knows version {SCHEMA_VERSION}"
                )
            elif int(row[0]) < SCHEMA_VERSION:
                for statements in _UPGRADES[int(row[0]) - 1 :]:
                    for statement in statements:
                        conn.execute(statement)
                conn.execute(
                    "UPDATE conveyor_meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
            for statement in _SCHEMA_ADDITIONS:
                conn.execute(statement)

    def _disconnect(self, conn: sqlite3.Connection) -> None:
        with self._watch_lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
        conn.close()

    def _unavailable(self, reason: str) -> BackendUnavailableError:
        return BackendUnavailableError(f"cannot open SQLite database {self.path}: {reason}")

    # ------------------------------------------------------------ plumbing

    async def _call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `fn(conn, ...)` on the backend thread, in turn."""
        thread = await self._ensure_open()
        return await asyncio.wrap_future(
            thread.submit(lambda conn: fn(conn, *args, **kwargs), Lane.OTHER)
        )

    async def _lease_call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `fn(conn, ...)` on the backend thread before any queued `_call`:
        for calls that keep leases alive (heartbeats, acknowledgements)."""
        thread = await self._ensure_open()
        return await asyncio.wrap_future(
            thread.submit(lambda conn: fn(conn, *args, **kwargs), Lane.LEASE)
        )

    async def _ensure_open(self) -> ConnectionThread:
        opened = self._opened
        if opened is None or not opened.done() or opened.exception() is not None:
            await self.open()
        thread = self._thread
        if thread is None:  # closed by another task meanwhile
            raise BackendUnavailableError(f"SQLite database {self.path} is closed")
        return thread

    def _wake(self) -> None:
        self._notifier.notify()

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
        with _write(conn):
            out, inserted = _insert(conn, jobs, now)
        if inserted:
            self._wakeups += 1
        return out, inserted

    # ------------------------------------------------------------ consuming

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
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
        sql = _claim_sql(len(queues), None if names is None else len(names))
        with _write(conn):
            conn.execute(_PROMOTE, (now, json.dumps(queues)))
            lease += waited_for_lock_after(conn, now)  # as in _heartbeat
            rows = conn.execute(
                sql, (now, now + lease, limit, token, *queues, *(names or ()))
            ).fetchall()
        rows.sort(key=_sort_key)
        jobs = [_job(row) for row in rows]
        for job in jobs:
            job.token = token
        return jobs

    async def unclaim(self, claim_id: str, now: float) -> int:
        handed_back = await self._call(self._unclaim, claim_id, now)
        if handed_back:
            self._wake()
        return handed_back

    def _unclaim(self, conn: sqlite3.Connection, claim_id: str, now: float) -> int:
        with _write(conn):
            handed_back: int = conn.execute(_UNCLAIM, (now, claim_id)).rowcount
        if handed_back:
            self._wakeups += 1
        return handed_back

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float
    ) -> list[LeaseStatus]:
        if not beats:
            return []
        return await self._lease_call(self._heartbeat, list(beats), lease, now)

    def _heartbeat(
        self, conn: sqlite3.Connection, beats: list[Heartbeat], lease: float, now: float
    ) -> list[LeaseStatus]:
        statuses: list[LeaseStatus] = []
        params: list[tuple[Any, ...]] = []
        with _write(conn):
            # A heartbeat held up by the write lock stores a lease that runs
            # from when it is stored, not one that ran out while it waited.
            until = now + lease + waited_for_lock_after(conn, now)
            held = _running_rows(conn, [beat.job_id for beat in beats])
            for beat in beats:
                row = held.get(beat.job_id)
                # row: (id, seq, token, queue, lease_until, cancel_requested)
                if row is None or row[2] != beat.token or row[4] < now:
                    statuses.append(LeaseStatus.LOST)
                    continue
                params.append((until, _logs_json(beat.logs), row[1]))
                statuses.append(LeaseStatus.CANCEL if row[5] else LeaseStatus.HELD)
            if params:
                conn.executemany(_HEARTBEAT, params)
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
        with _write(conn):
            held = _running_rows(conn, [out.job_id for out in outcomes])
            for out in outcomes:
                # pop: a second outcome for the same job in one batch finds it
                # no longer running, as it would in a later batch.
                row = held.pop(out.job_id, None)
                if row is None or row[2] != out.token:
                    accepted.append(False)
                    continue
                accepted.append(True)
                seq, queue, kind, cancel_requested = row[1], row[3], out.kind, row[5]
                if cancel_requested and (
                    kind is OutcomeKind.QUEUED or kind is OutcomeKind.SCHEDULED
                ):
                    kind = OutcomeKind.CANCELLED  # a cancel outlives the attempt
                logs = _logs_json(out.logs)
                if kind is OutcomeKind.COMPLETED:
                    completed.append((out.at, out.result, logs, seq))
                    if keep_completed is not None:
                        trim[("completed", queue)] = keep_completed
                elif kind is OutcomeKind.FAILED or kind is OutcomeKind.CANCELLED:
                    error = out.error or ("cancelled" if cancel_requested else None)
                    final.append((kind.value, out.at, out.result, error, out.progress, logs, seq))
                    if kind is OutcomeKind.FAILED and keep_failed is not None:
                        trim[("failed", queue)] = keep_failed
                elif kind is OutcomeKind.SCHEDULED:
                    run_at = out.run_at if out.run_at is not None else out.at
                    state = "scheduled" if run_at > out.at else "queued"
                    retry.append((state, run_at, out.error, out.progress, logs, seq))
                else:  # QUEUED
                    requeue.append((out.at, out.progress, logs, seq))
            if completed:
                conn.executemany(_FINISH_COMPLETED, completed)
            if final:
                conn.executemany(_FINISH_FINAL, final)
            if retry:
                conn.executemany(_FINISH_RETRY, retry)
            if requeue:
                conn.executemany(_FINISH_REQUEUE, requeue)
            for (state, queue), keep in trim.items():
                conn.execute(_TRIM, (state, queue, keep))
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
        return await self._call(self._progress, job_id, token, progress, _logs_json(logs))

    def _progress(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: str | None,
    ) -> bool:
        with _write(conn):
            changed = conn.execute(_PROGRESS, (progress, logs, job_id, token)).rowcount
        return changed == 1

    async def recover_expired(
        self, now: float, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        retention = retention or Retention()
        jobs = await self._call(self._recover_expired, now, max_stalled, retention)
        if jobs:
            self._wake()
        return jobs

    def _recover_expired(
        self, conn: sqlite3.Connection, now: float, max_stalled: int, retention: Retention
    ) -> list[Job]:
        with _write(conn):
            rows = conn.execute(_RECOVER, (now, max_stalled)).fetchall()
            if retention.keep_failed is not None:
                for queue in {row[3] for row in rows if row[5] == "failed"}:
                    conn.execute(_TRIM, ("failed", queue, retention.keep_failed))
        if rows:
            self._wakeups += 1
        rows.sort(key=lambda row: row[0])
        return [_job(row) for row in rows]

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
        ready, next_run = await self._call(_probe, queues_json, names_json)
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
                ready, next_run = await self._call(_probe, queues_json, names_json)

    def _woken_since(self, seen: int) -> bool:
        return self._wakeups != seen

    def _data_version(self) -> int | None:
        """PRAGMA data_version of the watch connection, read on the caller's
        thread: it only reads the WAL index in shared memory (a few
        microseconds, never waits: busy_timeout is 0), which is what lets an
        idle waiter poll often without a thread hop per poll. None when it
        cannot tell (busy, closed): the caller then probes."""
        with self._watch_lock:
            watch = self._watch
            if watch is None:
                return None
            try:
                version: int = watch.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                return None
            return version

    # ------------------------------------------------------------ inspecting

    async def get(self, job_id: str) -> Job | None:
        return await self._call(self._get_one, "id", job_id)

    async def get_by_key(self, key: str) -> Job | None:
        return await self._call(self._get_one, "key", key)

    @staticmethod
    def _get_one(conn: sqlite3.Connection, column: str, value: str) -> Job | None:
        # `column` is one of two literals above, never user input.
        row = conn.execute(
            f"SELECT {_COLS} FROM conveyor_jobs WHERE {column} = ?1", (value,)
        ).fetchone()
        return None if row is None else _job(row)

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        return await self._call(_list, state, name, queue, limit, offset)

    async def cancel(self, job_id: str, now: float) -> CancelResult:
        return await self._call(_cancel, job_id, now)

    async def retry(self, job_id: str, now: float) -> Job | None:
        job = await self._call(self._retry, job_id, now)
        if job is not None:
            self._wake()
        return job

    def _retry(self, conn: sqlite3.Connection, job_id: str, now: float) -> Job | None:
        with _write(conn):
            row = conn.execute(_RETRY, (now, job_id)).fetchone()
        if row is None:
            return None
        self._wakeups += 1
        return _job(row)

    async def stats(self) -> dict[str, dict[str, int]]:
        return await self._call(_stats)

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        wanted = [JobState(s).value for s in states if JobState(s) is not JobState.RUNNING]
        if not wanted:
            return 0
        return await self._call(_purge, json.dumps(wanted), older_than, queue)

    # ------------------------------------------------------------ schedules

    async def schedule_put(self, record: ScheduleRecord) -> None:
        await self._call(_schedule_put, record)

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        records = await self._call(
            _schedules, f"SELECT {_SCHEDULE_COLS} FROM conveyor_schedules WHERE name = ?1", name
        )
        return records[0] if records else None

    async def schedule_list(self) -> list[ScheduleRecord]:
        return await self._call(
            _schedules, f"SELECT {_SCHEDULE_COLS} FROM conveyor_schedules ORDER BY name"
        )

    async def schedule_delete(self, name: str) -> bool:
        return await self._call(_write_one, "DELETE FROM conveyor_schedules WHERE name = ?1", name)

    async def schedule_due(self, now: float, limit: int) -> list[ScheduleRecord]:
        return await self._call(
            _schedules,
            f"SELECT {_SCHEDULE_COLS} FROM conveyor_schedules WHERE enabled AND next_run <= ?1"
            " ORDER BY next_run LIMIT ?2",
            now,
            limit,
        )

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        fired = await self._call(
            self._schedule_fire,
            name,
            expected_next_run,
            next_run,
            last_run,
            last_error,
            list(jobs),
        )
        if fired:
            self._wake()
        return fired

    def _schedule_fire(
        self,
        conn: sqlite3.Connection,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: list[NewJob],
    ) -> list[Job] | None:
        # The compare-and-set and the enqueue commit together: a tick is
        # either fired with its jobs or not at all, whoever crashes.
        with _write(conn):
            params = (next_run, last_run, last_error, name, expected_next_run)
            if conn.execute(_SCHEDULE_FIRE, params).rowcount != 1:
                return None
            out, inserted = _insert(conn, jobs, time.time())
        if inserted:
            self._wakeups += 1
        return out

    # ------------------------------------------------------------ locks

    async def lock_acquire(self, key: str, token: str, ttl: float, now: float) -> bool:
        return await self._call(_write_one, _LOCK_ACQUIRE, key, token, now, ttl)

    async def lock_release(self, key: str, token: str) -> bool:
        return await self._call(
            _write_one,
            "DELETE FROM conveyor_locks WHERE key = ?1 AND token = ?2 AND expires > ?3",
            key,
            token,
            time.time(),
        )

    async def lock_extend(self, key: str, token: str, ttl: float, now: float) -> bool:
        return await self._lease_call(
            _write_one,
            "UPDATE conveyor_locks SET expires = ?1 + ?2"
            " WHERE key = ?3 AND token = ?4 AND expires > ?1",
            now,
            ttl,
            key,
            token,
        )

    # ------------------------------------------------------------ cache

    async def cache_get(self, key: str, now: float) -> str | None:
        return await self._call(_cache_get, key, now)

    async def cache_set(self, key: str, value: str, ttl: float | None, now: float) -> None:
        await self._call(_write_one, _CACHE_SET, key, value, None if ttl is None else now + ttl)

    async def cache_delete(self, key: str) -> bool:
        return await self._call(_write_one, "DELETE FROM conveyor_cache WHERE key = ?1", key)

    # ------------------------------------------------------------ workers

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float) -> None:
        await self._call(_worker_beat, info, now + ttl, now)

    async def worker_gone(self, worker_id: str) -> None:
        await self._call(_write_one, "DELETE FROM conveyor_workers WHERE id = ?1", worker_id)

    async def workers(self, now: float) -> list[WorkerInfo]:
        return await self._call(_workers, now)

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        return await self._call(_queued_by_name)

    # ------------------------------------------------------------ fork
    #
    # The facade's fork hooks. A child has no connection thread, so it must
    # open its own connections; and it must close its copies of the parent's
    # first. SQLite keeps its POSIX lock bookkeeping per process and file: new
    # connections next to inherited ones would share it and take no real
    # locks, and the parent's last close could then checkpoint and delete the
    # WAL under the child, losing the child's later writes. Closing the copies
    # writes nothing and leaves the parent's locks alone, provided no call was
    # half done at the fork (a transaction open, an SQLite mutex held): hence
    # the connection thread is parked between two calls while the process forks.

    _parked: ConnectionThread | None = None
    _parked_ok = False

    def _before_fork(self) -> None:
        with self._state_lock:
            thread = self._thread
        self._parked, self._parked_ok = thread, False
        if thread is not None:
            self._parked_ok = thread.park(_FORK_PARK_WAIT)
        self._watch_lock.acquire()  # nor a data_version read half done

    def _after_fork_in_parent(self) -> None:
        self._watch_lock.release()
        if self._parked is not None and self._parked_ok:
            self._parked.unpark()
        self._parked, self._parked_ok = None, False

    def _after_fork_in_child(self) -> None:
        thread = self._parked
        conn = thread.inherited_connection() if thread is not None else None
        inherited = [c for c in (conn, self._watch) if c is not None]
        safe = thread is None or self._parked_ok
        for c in inherited:
            if safe:
                c.close()
            else:  # a call may be half done in it: closing could hang or write
                leave_alone(c)
        if inherited and not safe:
            logger.warning(
                "forked while the SQLite backend of %s was busy: the child left the "
                "parent's connections open; close the parent's app last",
                self.path,
            )
        if thread is not None:
            leave_alone(thread)  # its locks may be held by threads that are gone
        self._watch = None
        self._thread = self._opened = None  # the parent's thread, not copied
        self._parked, self._parked_ok = None, False
        self._state_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._notifier = Notifier()  # its waiters are the parent's loops


# --------------------------------------------------------------- thread-side helpers


def _insert(conn: sqlite3.Connection, jobs: Sequence[NewJob], now: float) -> tuple[list[Job], int]:
    """Store jobs inside the caller's write transaction; (one record per
    input, how many rows were inserted). Keys are screened first, so the
    batch is one executemany and a bad row fails all of it."""
    keys = [new.key for new in jobs if new.key is not None]
    out: list[Job] = []
    rows: list[tuple[Any, ...]] = []
    scheduled, queued = JobState.SCHEDULED, JobState.QUEUED
    existing: dict[str, Sequence[Any]] = {}
    if keys:
        for row in conn.execute(_SELECT_BY_KEYS, (json.dumps(keys),)):
            existing[row[9]] = row
    first: dict[str, NewJob] = {}  # key -> its first occurrence in this batch
    for new in jobs:
        key = new.key
        if key is not None:
            if key in existing:
                out.append(_job(existing[key], duplicate=True))
                continue
            if key in first:
                dup_of = first[key]
                state = scheduled if dup_of.run_at > now else queued
                out.append(_new_job(dup_of, state, duplicate=True))
                continue
            first[key] = new
        state = scheduled if new.run_at > now else queued
        rows.append(
            (
                new.id,
                new.name,
                new.queue,
                new.payload,
                state.value,
                new.priority,
                new.max_retries,
                new.timeout,
                key,
                new.created_at,
                new.run_at,
            )
        )
        out.append(_new_job(new, state))
    try:
        conn.executemany(_INSERT, rows)
    except sqlite3.IntegrityError as exc:
        # Keys were screened above, so this is a clashing job id.
        raise InvalidOptionError(f"cannot enqueue: {exc} (job ids must be unique)") from exc
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
        raise InvalidOptionError(f"cannot enqueue: a field has a bad type: {exc}") from exc
    return out, len(rows)


def _probe(
    conn: sqlite3.Connection, names: str, served: str | None = None
) -> tuple[bool, float | None]:
    """(work is claimable now, the next scheduled run_at): `names` are the
    queues, `served` the job names (None: any) as JSON arrays."""
    if served is None:
        queued = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'queued'"
            " AND queue IN (SELECT value FROM json_each(?1)))",
            (names,),
        ).fetchone()[0]
    else:  # jobs of other names are no work for this caller: a worker must not wake for them
        queued = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM conveyor_jobs INDEXED BY conveyor_jobs_claim_name"
            " WHERE state = 'queued' AND queue IN (SELECT value FROM json_each(?1))"
            " AND name IN (SELECT value FROM json_each(?2)))",
            (names, served),
        ).fetchone()[0]
    # Of these queues only: a due job of another queue is not promoted by this
    # caller's claims, so it would wake the caller again and again. The index
    # is walked in run_at order up to the first job of these queues.
    row = conn.execute(
        "SELECT run_at FROM conveyor_jobs INDEXED BY conveyor_jobs_due"
        " WHERE state = 'scheduled' AND queue IN (SELECT value FROM json_each(?1))"
        " ORDER BY run_at LIMIT 1",
        (names,),
    ).fetchone()
    next_run = None if row is None else row[0]
    return bool(queued) or (next_run is not None and next_run <= time.time()), next_run


def _running_rows(conn: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """id -> (id, seq, token, queue, lease_until, cancel_requested) of the
    given jobs that are running."""
    return {row[0]: row for row in conn.execute(_SELECT_RUNNING, (json.dumps(ids),))}


def _list(
    conn: sqlite3.Connection,
    state: JobState | None,
    name: str | None,
    queue: str | None,
    limit: int,
    offset: int,
) -> list[Job]:
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(JobState(state).value)
    if name is not None:
        where.append("name = ?")
        params.append(name)
    if queue is not None:
        where.append("queue = ?")
        params.append(queue)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {_COLS} FROM conveyor_jobs {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
        (*params, max(limit, 0), max(offset, 0)),
    ).fetchall()
    return [_job(row) for row in rows]


def _cancel(conn: sqlite3.Connection, job_id: str, now: float) -> CancelResult:
    with _write(conn):
        row = conn.execute(
            "SELECT seq, state FROM conveyor_jobs WHERE id = ?1", (job_id,)
        ).fetchone()
        if row is None:
            return CancelResult.NOT_FOUND
        seq, state = row
        if state in ("completed", "failed", "cancelled"):
            return CancelResult.FINAL
        if state == "running":
            conn.execute("UPDATE conveyor_jobs SET cancel_requested = 1 WHERE seq = ?1", (seq,))
            return CancelResult.REQUESTED
        conn.execute(
            "UPDATE conveyor_jobs SET state = 'cancelled', finished_at = ?1, error = 'cancelled'"
            " WHERE seq = ?2",
            (now, seq),
        )
        return CancelResult.CANCELLED


def _stats(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for queue, state, count in conn.execute(
        "SELECT queue, state, count(*) FROM conveyor_jobs GROUP BY queue, state"
    ):
        counts = out.get(queue)
        if counts is None:
            counts = out[queue] = {s.value: 0 for s in JobState}
        counts[state] = count
    return out


def _purge(
    conn: sqlite3.Connection, states: str, older_than: float | None, queue: str | None
) -> int:
    with _write(conn):
        removed: int = conn.execute(_PURGE, (states, queue, older_than)).rowcount
    return removed


def _quote_path(path: str) -> str:
    # In a file: URI, '?' and '#' would start the query or fragment and '%'
    # an escape; nothing else needs quoting for SQLite's URI parser.
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _explain(exc: sqlite3.DatabaseError) -> str:
    message = str(exc)
    if "not a database" in message:
        return "the file is not a SQLite database"
    if "readonly" in message:
        return "the database is read-only (check file and directory permissions)"
    if "unable to open" in message:
        return "unable to open the file (check the path and permissions)"
    return message


def _remove_created(path: str) -> None:
    """Remove what a failed open of a new database created, so a typo or a
    bad location leaves no stray files behind. Only empty files: if another
    process has written a database there meanwhile, it stays."""
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > 0:
            return
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(OSError):
            os.remove(name)


def _write_one(conn: sqlite3.Connection, sql: str, *params: Any) -> bool:
    """One write statement in its own transaction; True if it changed a row."""
    with _write(conn):
        changed: int = conn.execute(sql, params).rowcount
    return changed > 0


def _schedule_put(conn: sqlite3.Connection, record: ScheduleRecord) -> None:
    with _write(conn):
        conn.execute(
            _SCHEDULE_PUT,
            (
                record.name,
                record.job_name,
                record.payload,
                record.cron,
                record.every,
                record.tz,
                record.key,
                int(record.enabled),
                record.next_run,
                record.created_at,
                record.updated_at,
                record.last_run,
                record.last_error,
                record.catch_up,
                record.max_catch_up,
                record.misfire_grace,
                record.options,
            ),
        )


def _schedules(conn: sqlite3.Connection, sql: str, *params: Any) -> list[ScheduleRecord]:
    records: list[ScheduleRecord] = []
    for row in conn.execute(sql, params):
        record = ScheduleRecord(*row)
        record.enabled = bool(record.enabled)
        records.append(record)
    return records


def _cache_get(conn: sqlite3.Connection, key: str, now: float) -> str | None:
    row = conn.execute(
        "SELECT value, expires FROM conveyor_cache WHERE key = ?1", (key,)
    ).fetchone()
    if row is None:
        return None
    value, expires = row
    if expires is not None and expires <= now:
        # Expired entries go when they are next read, as in the memory backend.
        with _write(conn):
            conn.execute("DELETE FROM conveyor_cache WHERE key = ?1 AND expires <= ?2", (key, now))
        return None
    text: str = value
    return text


def _worker_beat(conn: sqlite3.Connection, info: WorkerInfo, expires: float, now: float) -> None:
    with _write(conn):
        # Records of workers that died without saying goodbye go here.
        conn.execute("DELETE FROM conveyor_workers WHERE expires <= ?1", (now,))
        conn.execute(
            "INSERT OR REPLACE INTO conveyor_workers"
            " (id, host, pid, queues, names, started_at, last_seen, expires)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.id,
                info.host,
                info.pid,
                json.dumps(info.queues),
                json.dumps(info.names),
                info.started_at,
                info.last_seen,
                expires,
            ),
        )


def _workers(conn: sqlite3.Connection, now: float) -> list[WorkerInfo]:
    rows = conn.execute(
        "SELECT id, host, pid, queues, names, started_at, last_seen FROM conveyor_workers"
        " WHERE expires > ?1 ORDER BY started_at, id",
        (now,),
    )
    return [
        WorkerInfo(id, host, pid, tuple(json.loads(queues)), tuple(json.loads(names)), start, seen)
        for id, host, pid, queues, names, start, seen in rows
    ]


def _queued_by_name(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for queue, name, count in conn.execute(
        "SELECT queue, name, count(*) FROM conveyor_jobs INDEXED BY conveyor_jobs_claim_name"
        " WHERE state = 'queued' GROUP BY queue, name"
    ):
        out.setdefault(queue, {})[name] = count
    return out
