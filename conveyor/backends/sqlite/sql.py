"""The SQLite backend's schema, its upgrades, and the SQL statements it runs,
including the claim statements built per number of queues and job names."""

from __future__ import annotations

import functools
from typing import Final

from conveyor.job import HISTORY_LIMIT

# 2: the claim token column; 3: traceback and history (see UPGRADES). A
# database at a newer version than this code knows is refused, so old workers
# cannot open an upgraded file.
SCHEMA_VERSION: Final = 3

# Above this many queues the per-queue UNION ALL claim (each branch an index
# range scan) would be too long a statement; fall back to one IN-list scan.
_MAX_UNION_QUEUES: Final = 32
# The same for a claim by job names: one branch per (queue, name) pair. Below
# SQLite's limit of 500 terms in a compound SELECT.
_MAX_UNION_PAIRS: Final = 256

SCHEMA: Final = """
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
    token            TEXT,  -- the fencing token of the current claim (NULL once the job
                            -- stops running) so that a claim made by a release that
                            -- knows no tokens never inherits a stale one
    traceback        TEXT,  -- of the failure the error column describes
    history          TEXT NOT NULL DEFAULT '[]',  -- JSON array: the last attempts
    headers          TEXT  -- JSON: the trace context of the enqueue (COLUMN_ADDITIONS)
    -- No commas or semicolons in these comments: ALTER TABLE DROP COLUMN (tests make
    -- older tables with it) takes one for the end of the column before.
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
UPGRADES: Final = (
    # 2: fencing by a claim token that never repeats, where the attempt count
    # (lowered again by a hand-back) did. Running jobs get no token, so their
    # claims made by older code are fenced off and come back by lease expiry.
    ("ALTER TABLE conveyor_jobs ADD COLUMN token TEXT",),
    # 3: the traceback of the last failure and the history of attempts.
    (
        "ALTER TABLE conveyor_jobs ADD COLUMN traceback TEXT",
        "ALTER TABLE conveyor_jobs ADD COLUMN history TEXT NOT NULL DEFAULT '[]'",
    ),
)

# Added since schema version 1 was first released, created on open when
# missing; an older conveyor sharing the file is not disturbed by them.
SCHEMA_ADDITIONS: Final = (
    # Claims by job name (the worker's): one range per (queue, name), in
    # claim order. The older conveyor_jobs_claim still serves claims of any
    # name (admin and test callers, and workers of an older release).
    "CREATE INDEX IF NOT EXISTS conveyor_jobs_claim_name"
    " ON conveyor_jobs (queue, name, priority, run_at) WHERE state = 'queued'",
    # Worker presence: a row per live worker, renewed every few seconds.
    "CREATE TABLE IF NOT EXISTS conveyor_workers ("
    " id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,"
    " queues TEXT NOT NULL, names TEXT NOT NULL,"  # JSON arrays
    " started_at REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL,"
    " details TEXT"  # JSON: concurrency, running jobs (COLUMN_ADDITIONS)
    ") WITHOUT ROWID",
    # Paused queues: workers leave them out of their claims.
    "CREATE TABLE IF NOT EXISTS conveyor_paused ("
    " queue TEXT PRIMARY KEY, paused_at REAL NOT NULL) WITHOUT ROWID",
)

# Columns added since to existing tables, as (table, column, definition),
# without a schema version (so that an older conveyor still opens the file):
# a table created now has them, an older one gets them on open
# (SQLite has no ADD COLUMN IF NOT EXISTS); an older conveyor names its
# columns and leaves these at their default.
COLUMN_ADDITIONS: Final = (
    # Worker presence: concurrency and the jobs running at the latest beat
    # (JSON, as WorkerInfo.details() makes it).
    ("conveyor_workers", "details", "TEXT"),
    # Job.headers (JSON: the enqueue's trace context), kept for every run.
    ("conveyor_jobs", "headers", "TEXT"),
)

COLS: Final = (
    "seq, id, name, queue, payload, state, priority, max_retries, timeout, key, created_at,"
    " run_at, attempts, result, error, progress, started_at, finished_at, stalls,"
    " cancel_requested, logs, traceback, history, headers"
)

INSERT: Final = (
    "INSERT INTO conveyor_jobs (id, name, queue, payload, state, priority, max_retries,"
    " timeout, key, created_at, run_at, headers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_BY_KEYS: Final = (
    f"SELECT {COLS} FROM conveyor_jobs WHERE key IN (SELECT value FROM json_each(?1))"
)
# INDEXED BY / unary +: with no ANALYZE statistics the planner prefers the
# equality on conveyor_jobs_state, which would walk every scheduled (or
# running) job instead of a run_at range (or one id lookup per job).
PROMOTE: Final = (
    "UPDATE conveyor_jobs INDEXED BY conveyor_jobs_due SET state = 'queued'"
    " WHERE state = 'scheduled' AND run_at <= ?1"
    " AND queue IN (SELECT value FROM json_each(?2))"
)
# A broker's store (base.DeliveryStore): up to ?3 due scheduled jobs of the
# queues in ?2 become queued, earliest first; the due index yields them in
# (run_at, seq) order, so the walk stops after ?3 of these queues' rows.
RELEASE_DUE: Final = (
    "UPDATE conveyor_jobs SET state = 'queued' WHERE seq IN ("
    "SELECT seq FROM conveyor_jobs INDEXED BY conveyor_jobs_due"
    " WHERE state = 'scheduled' AND run_at <= ?1"
    " AND queue IN (SELECT value FROM json_each(?2)) ORDER BY run_at, seq LIMIT ?3)"
    f" RETURNING {COLS}"
)
# One parameter holding a JSON array keeps a single cached statement for every
# batch size, where "IN (?, ?, ...)" would compile a new one per size.
SELECT_RUNNING: Final = (
    "SELECT id, seq, token, queue, lease_until, cancel_requested FROM conveyor_jobs"
    " WHERE id IN (SELECT value FROM json_each(?1)) AND +state = 'running'"
)

# Appends a JSON array of log entries (?N, or NULL for none) to the stored
# array by splicing text, which avoids parsing the stored logs at all.
_APPEND_LOGS: Final = (
    "logs = CASE WHEN {p} IS NULL THEN logs WHEN logs = '[]' THEN {p}"
    " ELSE substr(logs, 1, length(logs) - 1) || ',' || substr({p}, 2) END"
)


def _append_history(finished_at: str, outcome: str, error: str) -> str:
    """The SET term that ends the current attempt in the history: an entry
    (records.py's stored_entry, from the row's attempts and started_at as they
    were before this UPDATE) appended, the oldest dropped beyond the limit.
    The arguments are SQL expressions."""
    return (
        "history = json_insert(CASE WHEN json_array_length(history) >= "
        f"{HISTORY_LIMIT} THEN json_remove(history, '$[0]') ELSE history END, '$[#]',"
        f" json_object('attempt', attempts, 'started_at', {_exact('started_at')},"
        f" 'finished_at', {_exact(finished_at)}, 'outcome', {outcome}, 'error', {error}))"
    )


def _exact(time: str) -> str:
    """A time as a JSON number with every digit of the double: a bare REAL
    in json_object gets 15 significant digits, microseconds off the stored
    times (and off the other backends' histories); 17 read back exactly."""
    return f"CASE WHEN {time} IS NULL THEN NULL ELSE json(printf('%!.17g', {time})) END"


_COMPLETED, _HANDED_BACK = "'completed'", "'handed back'"
HEARTBEAT: Final = (
    f"UPDATE conveyor_jobs SET lease_until = ?1, {_APPEND_LOGS.format(p='?2')} WHERE seq = ?3"
)
FINISH_COMPLETED: Final = (
    "UPDATE conveyor_jobs SET state = 'completed', finished_at = ?1, result = ?2, error = NULL,"
    f" token = NULL, traceback = NULL, {_append_history('?1', _COMPLETED, 'NULL')},"
    f" progress = 100.0, {_APPEND_LOGS.format(p='?3')} WHERE seq = ?4"
)
# FAILED and CANCELLED: final, error and result as reported; a failure's
# traceback (?8), the attempt's outcome in the history (?9).
FINISH_FINAL: Final = (
    "UPDATE conveyor_jobs SET state = ?1, finished_at = ?2, result = ?3, error = ?4, token = NULL,"
    " traceback = CASE WHEN ?1 = 'failed' THEN ?8 ELSE traceback END,"
    f" {_append_history('?2', '?9', '?4')},"
    f" progress = coalesce(?5, progress), {_APPEND_LOGS.format(p='?6')} WHERE seq = ?7"
)
# SCHEDULED: a retry; the state (scheduled or, if already due, queued) is
# decided in Python. ?7 the traceback, ?8 when the attempt ended, ?9 its outcome.
FINISH_RETRY: Final = (
    "UPDATE conveyor_jobs SET state = ?1, run_at = ?2, error = ?3, token = NULL, traceback = ?7,"
    f" {_append_history('?8', '?9', '?3')},"
    f" progress = coalesce(?4, progress), {_APPEND_LOGS.format(p='?5')} WHERE seq = ?6"
)
# QUEUED: handed back at shutdown, so this attempt does not count.
FINISH_REQUEUE: Final = (
    f"UPDATE conveyor_jobs SET {_append_history('?1', _HANDED_BACK, 'NULL')},"
    " state = 'queued', attempts = attempts - 1, started_at = NULL, token = NULL,"
    f" run_at = ?1, progress = coalesce(?2, progress), {_APPEND_LOGS.format(p='?3')}"
    " WHERE seq = ?4"
)
# Keeps the newest `?3` final jobs of one (state, queue); the state index
# yields them in (finished_at, seq) order, so this walks the index only.
TRIM: Final = (
    "DELETE FROM conveyor_jobs WHERE seq IN (SELECT seq FROM conveyor_jobs"
    " WHERE state = ?1 AND queue = ?2 ORDER BY finished_at DESC, seq DESC LIMIT -1 OFFSET ?3)"
)
PROGRESS: Final = (
    "UPDATE conveyor_jobs SET progress = coalesce(?1, progress),"
    f" {_APPEND_LOGS.format(p='?2')}"
    " WHERE id = ?3 AND state = 'running' AND token = ?4"
)
# What a claim sets on each job it leases: ?1 started_at, ?2 lease_until, ?4
# the claim token.
_LEASE: Final = (
    "state = 'running', attempts = attempts + 1, started_at = ?1, lease_until = ?2,"
    " token = ?4, cancel_requested = 0"
)
# A broker's store claims the jobs whose ids the broker delivered (?3, a JSON
# array), each only if queued, whatever its name, priority or run_at. An id
# listed twice matches its row once. Unary +: the unique id index finds them.
CLAIM_IDS: Final = (
    f"UPDATE conveyor_jobs SET {_LEASE}"
    " WHERE id IN (SELECT value FROM json_each(?3)) AND +state = 'queued'"
    f" RETURNING {COLS}"
)
# A claim whose reply was lost: its jobs go back as if handed back (attempt
# not counted), a cancel-requested one ends cancelled, as in _finish. The
# running jobs are few (bounded by worker concurrency), found by the state index.
UNCLAIM: Final = f"""
UPDATE conveyor_jobs SET
    {
    _append_history(
        "?1", "CASE WHEN cancel_requested THEN 'cancelled' ELSE 'handed back' END", "NULL"
    )
},
    token = NULL,
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
RECOVER: Final = f"""
UPDATE conveyor_jobs SET
    {
    _append_history(
        "?1", "'stalled'", "'lease expired at attempt ' || attempts || ' (worker lost)'"
    )
},
    token = NULL,
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
RETURNING {COLS}
"""
# A failed job gets exactly one more attempt; a cancelled one resumes with
# what was left of its retries (at least one attempt).
RETRY: Final = (
    "UPDATE conveyor_jobs SET state = 'queued', max_retries = CASE state"
    " WHEN 'failed' THEN attempts ELSE max(max_retries, attempts) END,"
    " run_at = ?1, finished_at = NULL, stalls = 0, token = NULL"
    f" WHERE id = ?2 AND state IN ('failed', 'cancelled') RETURNING {COLS}"
)
PURGE: Final = """
DELETE FROM conveyor_jobs
WHERE state IN (SELECT value FROM json_each(?1)) AND state != 'running'
  AND (?2 IS NULL OR queue = ?2)
  AND (?3 IS NULL
       OR (CASE WHEN state IN ('scheduled', 'queued') THEN created_at ELSE finished_at END) < ?3)
"""

# Jobs a broker refused to carry (base.DeliveryStore.withdraw).
WITHDRAW: Final = """
DELETE FROM conveyor_jobs
WHERE id IN (SELECT value FROM json_each(?1)) AND state IN ('queued', 'scheduled')
  AND attempts = 0
RETURNING id
"""

# In ScheduleRecord's field order (a test holds the two together).
SCHEDULE_COLS: Final = (
    "name, job_name, payload, cron, every, tz, key, enabled, next_run, created_at, updated_at,"
    " last_run, last_error, catch_up, max_catch_up, misfire_grace, options"
)
SCHEDULE_PUT: Final = (
    f"INSERT OR REPLACE INTO conveyor_schedules ({SCHEDULE_COLS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SCHEDULE_FIRE: Final = (
    "UPDATE conveyor_schedules SET next_run = ?1, last_run = coalesce(?2, last_run),"
    " last_error = ?3 WHERE name = ?4 AND enabled AND next_run = ?5"
)
# Takes the lock when it is free or expired: the upsert's WHERE leaves a
# live holder's row alone, and then no row changes.
LOCK_ACQUIRE: Final = (
    "INSERT INTO conveyor_locks (key, token, expires) VALUES (?1, ?2, ?3 + ?4)"
    " ON CONFLICT (key) DO UPDATE SET token = excluded.token, expires = excluded.expires"
    " WHERE conveyor_locks.expires <= ?3"
)
CACHE_SET: Final = (
    "INSERT INTO conveyor_cache (key, value, expires) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"
)


@functools.lru_cache(maxsize=64)
def claim_sql(n_queues: int, n_names: int | None = None) -> str:
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
    return f"UPDATE conveyor_jobs SET {_LEASE} WHERE seq IN ({pick}) RETURNING {COLS}"


def _pick_by_name(n_queues: int, n_names: int, order: str) -> str:
    """The SELECT of a claim by name (see claim_sql): the jobs of names other
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
