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
  partial index on queued jobs only.
* Idle workers wake on an in-process `Notifier` (enqueues made through this
  backend object) or, for commits by other connections and processes, on a
  change of `PRAGMA data_version`, polled every 15 ms on a second, read-only
  "watch" connection: it reads the WAL index in shared memory, no disk I/O,
  and only a change costs a real query (is there work for these queues?).
* Recurring schedules, locks and the cache live in three small tables of the
  same file; a schedule's tick fires (compare-and-set on next_run) and
  enqueues its jobs in one transaction.

sqlite3 calls block, so each backend object owns one thread that owns the
connection; async methods hand it closures with `run_in_executor`. The thread
serialises all use of the connection, and no state is tied to an event loop,
so the backend serves any number of loops (the blocking twins run their own).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor._sync import leave_alone
from conveyor.backends._notify import Notifier
from conveyor.backends.base import (
    CancelResult,
    Capabilities,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
    ScheduleRecord,
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

SCHEMA_VERSION: Final = 1

# How often an idle waiter looks at PRAGMA data_version for commits made by
# other connections. Each look is a thread hop and a shared-memory read (tens
# of microseconds), so 15 ms keeps cross-process wake-up latency well under
# 50 ms while an idle worker stays near 0 % CPU.
POLL_INTERVAL: Final = 0.015

# Beyond busy_timeout, a write that still finds the file locked is retried
# this many times after these pauses before the error reaches the caller.
_LOCK_RETRY_PAUSES: Final = (0.01, 0.05, 0.1, 0.25, 0.5)
# How long a fork waits for the backend thread to finish the calls queued
# before it (a write retrying behind another process's lock can take ~30 s).
_FORK_PARK_WAIT: Final = 30.0

# Above this many queues the per-queue UNION ALL claim (each branch an index
# range scan) would be too long a statement; fall back to one IN-list scan.
_MAX_UNION_QUEUES: Final = 32

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
    attempts         INTEGER NOT NULL DEFAULT 0,  -- also the fencing token
    result           TEXT,                  -- JSON text
    error            TEXT,
    progress         REAL NOT NULL DEFAULT 0,
    started_at       REAL,
    finished_at      REAL,
    lease_until      REAL NOT NULL DEFAULT 0,
    stalls           INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    logs             TEXT NOT NULL DEFAULT '[]'   -- JSON array
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
    "SELECT id, seq, attempts, queue, lease_until, cancel_requested FROM conveyor_jobs"
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
    " WHERE id = ?3 AND state = 'running' AND attempts = ?4"
)
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


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)
    return "locked" in message or "busy" in message


@functools.lru_cache(maxsize=64)
def _claim_sql(n_queues: int) -> str:
    """The claim statement for `n_queues` queues.

    Parameters: ?1 started_at, ?2 lease_until, ?3 limit, ?4... the queues.
    One index range scan per queue, each stopping after `limit` rows, then a
    merge of at most n * limit rows: never a sort of the whole backlog.
    """
    order = "ORDER BY priority, run_at, seq"
    if n_queues == 1:
        pick = (
            "SELECT seq FROM conveyor_jobs INDEXED BY conveyor_jobs_claim"
            f" WHERE state = 'queued' AND queue = ?4 {order} LIMIT ?3"
        )
    elif n_queues <= _MAX_UNION_QUEUES:
        branches = " UNION ALL ".join(
            "SELECT * FROM (SELECT seq, priority, run_at"
            " FROM conveyor_jobs INDEXED BY conveyor_jobs_claim"
            f" WHERE state = 'queued' AND queue = ?{i + 4} {order} LIMIT ?3)"
            for i in range(n_queues)
        )
        pick = f"SELECT seq FROM ({branches}) {order} LIMIT ?3"
    else:
        marks = ", ".join(f"?{i + 4}" for i in range(n_queues))
        pick = (
            f"SELECT seq FROM conveyor_jobs WHERE state = 'queued' AND queue IN ({marks})"
            f" {order} LIMIT ?3"
        )
    return (
        "UPDATE conveyor_jobs SET state = 'running', attempts = attempts + 1, started_at = ?1,"
        f" lease_until = ?2, cancel_requested = 0 WHERE seq IN ({pick}) RETURNING {_COLS}"
    )


@contextlib.contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, holding the write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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

    URL options: `busy_timeout` (milliseconds to wait for another process's
    write lock, default 5000) and `synchronous` (`off`, `normal` (default),
    `full`, `extra`), e.g. `sqlite:///jobs.db?busy_timeout=10000`.

    Any call opens the backend if it is not open yet; `close()` releases the
    connection and its thread.
    """

    capabilities = Capabilities(recurring=True, locks=True, cache=True)

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = _parse_url(url)
        self._busy_timeout_ms = 5000
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
        self._executor: ThreadPoolExecutor | None = None
        self._opened: Future[None] | None = None
        # Owned by the backend thread: the connection, and a counter bumped
        # after every commit that makes work available, which lets a waiter
        # see a wake-up that raced ahead of its registration.
        self._conn: sqlite3.Connection | None = None
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
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="conveyor-sqlite"
                )
                self._opened = self._executor.submit(self._connect)
            opened, executor = self._opened, self._executor
        try:
            await asyncio.wrap_future(opened)
        except Exception:
            # Leave the backend closed, so a later call tries afresh. (A
            # cancelled caller is not a failure: the open goes on, and the
            # next call waits for the same future.)
            with self._state_lock:
                if self._opened is opened:
                    self._opened = self._executor = None
            if executor is not None:
                executor.shutdown(wait=True)  # idle now: a quick join, no thread left behind
            raise

    async def close(self) -> None:
        with self._state_lock:
            executor, self._executor, self._opened = self._executor, None, None
        if executor is None:
            return
        # Queued calls (from any loop) run first; then the connection closes.
        await asyncio.wrap_future(executor.submit(self._disconnect))
        executor.shutdown(wait=True)  # the thread is idle by now: a quick join

    def _connect(self) -> None:
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
        conn: sqlite3.Connection | None = None
        try:
            # mode=rw for an existing file: never silently replace a file that
            # vanished in the meantime with an empty database.
            mode = "rw" if existed else "rwc"
            uri = f"file:{_quote_path(path)}?mode={mode}"
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=0
            )
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._create_schema(conn)
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
        self._conn = conn
        with self._watch_lock:
            self._watch = watch

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

    def _disconnect(self) -> None:
        with self._watch_lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
        conn, self._conn = self._conn, None
        if conn is not None:
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
        """Run `fn(conn, ...)` on the backend thread."""
        executor = await self._ensure_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            executor, functools.partial(self._guarded, fn, *args, **kwargs)
        )

    async def _ensure_open(self) -> ThreadPoolExecutor:
        opened = self._opened
        if opened is None or not opened.done() or opened.exception() is not None:
            await self.open()
        executor = self._executor
        if executor is None:  # closed by another task meanwhile
            raise BackendUnavailableError(f"SQLite database {self.path} is closed")
        return executor

    def _guarded(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run on the backend thread: retry on a lock held past busy_timeout,
        and turn storage failures into BackendUnavailableError."""
        conn = self._conn
        if conn is None:
            raise BackendUnavailableError(f"SQLite database {self.path} is not open")
        for pause in (*_LOCK_RETRY_PAUSES, None):
            try:
                return fn(conn, *args, **kwargs)
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:  # e.g. a failed COMMIT
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if pause is not None and _is_lock_error(exc):
                    time.sleep(pause)
                    continue
                raise BackendUnavailableError(f"SQLite database {self.path}: {exc}") from exc
            except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
                raise  # bad input or a bug here: not the storage's fault
            except sqlite3.DatabaseError as exc:  # corrupt file, disk I/O error, ...
                raise BackendUnavailableError(f"SQLite database {self.path}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

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

    async def claim(self, queues: Sequence[str], limit: int, lease: float, now: float) -> list[Job]:
        if limit <= 0 or not queues:
            return []
        return await self._call(self._claim, tuple(dict.fromkeys(queues)), limit, lease, now)

    def _claim(
        self,
        conn: sqlite3.Connection,
        queues: tuple[str, ...],
        limit: int,
        lease: float,
        now: float,
    ) -> list[Job]:
        with _write(conn):
            conn.execute(_PROMOTE, (now, json.dumps(queues)))
            rows = conn.execute(
                _claim_sql(len(queues)), (now, now + lease, limit, *queues)
            ).fetchall()
        rows.sort(key=_sort_key)
        return [_job(row) for row in rows]

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float
    ) -> list[LeaseStatus]:
        if not beats:
            return []
        return await self._call(self._heartbeat, list(beats), lease, now)

    def _heartbeat(
        self, conn: sqlite3.Connection, beats: list[Heartbeat], lease: float, now: float
    ) -> list[LeaseStatus]:
        statuses: list[LeaseStatus] = []
        params: list[tuple[Any, ...]] = []
        until = now + lease
        with _write(conn):
            held = _running_rows(conn, [beat.job_id for beat in beats])
            for beat in beats:
                row = held.get(beat.job_id)
                # row: (id, seq, attempts, queue, lease_until, cancel_requested)
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
        accepted, requeued = await self._call(self._finish, list(outcomes), retention)
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
        self, job_id: str, token: int, progress: float | None, logs: Sequence[dict[str, Any]]
    ) -> bool:
        return await self._call(self._progress, job_id, token, progress, _logs_json(logs))

    def _progress(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        token: int,
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

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        names = json.dumps(list(dict.fromkeys(queues)))
        await self._ensure_open()
        # Both read before probing, so a commit that lands after the probe
        # changes one of them and is not missed.
        seen, version = self._wakeups, self._data_version()
        ready, next_run = await self._call(_probe, names)
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
                ready, next_run = await self._call(_probe, names)

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

    async def list(
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

    async def schedule_list(self) -> builtins.list[ScheduleRecord]:
        return await self._call(
            _schedules, f"SELECT {_SCHEDULE_COLS} FROM conveyor_schedules ORDER BY name"
        )

    async def schedule_delete(self, name: str) -> bool:
        return await self._call(_write_one, "DELETE FROM conveyor_schedules WHERE name = ?1", name)

    async def schedule_due(self, now: float, limit: int) -> builtins.list[ScheduleRecord]:
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
    ) -> builtins.list[Job] | None:
        fired = await self._call(
            self._schedule_fire,
            name,
            expected_next_run,
            next_run,
            last_run,
            last_error,
            builtins.list(jobs),
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
        jobs: builtins.list[NewJob],
    ) -> builtins.list[Job] | None:
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
        return await self._call(
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

    # ------------------------------------------------------------ fork
    #
    # The facade's fork hooks. A child has no backend thread, so it must open
    # its own connections; and it must close its copies of the parent's first.
    # SQLite keeps its POSIX lock bookkeeping per process and file: new
    # connections next to inherited ones would share it and take no real
    # locks, and the parent's last close could then checkpoint and delete the
    # WAL under the child, losing the child's later writes. Closing the copies
    # writes nothing and leaves the parent's locks alone, provided no call was
    # half done at the fork (a transaction open, an SQLite mutex held): hence
    # the backend thread waits between two calls while the process forks.

    _fork_gate: threading.Event | None = None
    _parked_for_fork = False

    def _before_fork(self) -> None:
        self._fork_gate, self._parked_for_fork = None, False
        with self._state_lock:
            executor = self._executor
        if executor is not None:
            parked, gate = threading.Event(), threading.Event()
            try:
                executor.submit(_park_for_fork, parked, gate)
            except RuntimeError:  # shut down meanwhile: no thread to park
                pass
            else:
                self._fork_gate = gate
                self._parked_for_fork = parked.wait(_FORK_PARK_WAIT)
        self._watch_lock.acquire()  # nor a data_version read half done

    def _after_fork_in_parent(self) -> None:
        self._watch_lock.release()
        if self._fork_gate is not None:
            self._fork_gate.set()
            self._fork_gate = None

    def _after_fork_in_child(self) -> None:
        inherited = [conn for conn in (self._conn, self._watch) if conn is not None]
        for conn in inherited:
            if self._parked_for_fork:
                conn.close()
            else:  # a call may be half done in it: closing could hang or write
                leave_alone(conn)
        if inherited and not self._parked_for_fork:
            logger.warning(
                "forked while the SQLite backend of %s was busy: the child left the "
                "parent's connections open; close the parent's app last",
                self.path,
            )
        self._conn = self._watch = None
        self._executor = self._opened = None  # the parent's thread, not copied
        self._fork_gate, self._parked_for_fork = None, False
        self._state_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._notifier = Notifier()  # its waiters are the parent's loops


# --------------------------------------------------------------- thread-side helpers


def _park_for_fork(parked: threading.Event, gate: threading.Event) -> None:
    """Hold the backend thread between two calls until the fork is done."""
    parked.set()
    gate.wait(_FORK_PARK_WAIT * 2)


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


def _probe(conn: sqlite3.Connection, names: str) -> tuple[bool, float | None]:
    """(work is claimable now, the next scheduled run_at)."""
    queued = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'queued'"
        " AND queue IN (SELECT value FROM json_each(?1)))",
        (names,),
    ).fetchone()[0]
    next_run = conn.execute(
        "SELECT min(run_at) FROM conveyor_jobs INDEXED BY conveyor_jobs_due"
        " WHERE state = 'scheduled'"
    ).fetchone()[0]
    return bool(queued) or (next_run is not None and next_run <= time.time()), next_run


def _running_rows(conn: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """id -> (id, seq, attempts, queue, lease_until, cancel_requested) of the
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
