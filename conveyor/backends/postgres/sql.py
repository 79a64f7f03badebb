"""The SQL the PostgreSQL backend runs, built once per schema.

Every statement takes its batch as one JSON array of rows (`rows_of`), so one statement (one
cached plan) serves every batch size, and a batch is one round trip. Times
are epoch seconds; `%(now)s` is the caller's time or NULL for the server's
clock (`NOW`), which is the clock that decides when the engine sends none.
"""

from __future__ import annotations

from functools import cached_property
from typing import Final

from conveyor.backends.stores import STALE_WORKER_KEPT
from conveyor.job import HISTORY_LIMIT, AttemptOutcome

# The server's time (stable within a statement), unless the caller gave one.
NOW: Final = "coalesce(%(now)s::float8, extract(epoch FROM statement_timestamp())::float8)"

COLS: Final = (
    "seq, id, name, queue, payload, state, priority, max_retries, timeout, key, created_at,"
    " run_at, attempts, result, error, progress, started_at, finished_at, stalls,"
    " cancel_requested, logs, traceback, history, headers"
)
# The type of each of COLS, in order (to pad rows that carry other data).
COL_TYPES: Final = (
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "text",
    "integer",
    "integer",
    "float8",
    "text",
    "float8",
    "float8",
    "integer",
    "text",
    "text",
    "float8",
    "float8",
    "float8",
    "integer",
    "boolean",
    "jsonb",
    "text",
    "jsonb",
    "text",
)
# A statement of the worker's (claims, heartbeats, acknowledgements) commits
# without waiting for the WAL flush when %(commit)s is 'off': a setting local
# to the statement's own transaction, so it costs no extra round trip. NULL
# keeps the server's setting (the URL's sync_acks=true).
LAZY_COMMIT: Final = (
    "SELECT set_config('synchronous_commit',"
    " coalesce(%(commit)s::text, current_setting('synchronous_commit')), true)"
)
SCHEDULE_COLS: Final = (
    "name, job_name, payload, cron, every, tz, key, enabled, next_run, created_at, updated_at,"
    " last_run, last_error, catch_up, max_catch_up, misfire_grace, options"
)

# What a claim sets on each job it leases (`now` is the statement's CTE).
_LEASE: Final = (
    "state = 'running', attempts = j.attempts + 1, started_at = now.t,"
    " lease_until = now.t + %(lease)s, token = %(token)s, cancel_requested = false"
)

# Most scheduled jobs one claim moves to the queue (the rest go with the next).
PROMOTE_BATCH: Final = 1000


def _history(finished_at: str, outcome: str, error: str, j: str = "") -> str:
    """The SET term ending the current attempt in the history (records.py's
    stored_entry from the row as it was before this UPDATE), the oldest entry
    dropped beyond the limit. Arguments are SQL expressions; `j` qualifies
    the row's columns (`"j."`) where a FROM list makes them ambiguous."""
    return (
        f"history = (CASE WHEN jsonb_array_length({j}history) >= {HISTORY_LIMIT}"
        f" THEN {j}history - 0 ELSE {j}history END) || jsonb_build_array(jsonb_build_object("
        f"'attempt', {j}attempts, 'started_at', {j}started_at, 'finished_at', {finished_at},"
        f" 'outcome', {outcome}, 'error', {error}))"
    )


def _append_logs(new: str, j: str = "") -> str:
    return f"logs = CASE WHEN {new} IS NULL THEN {j}logs ELSE {j}logs || {new}::jsonb END"


_A = AttemptOutcome

# The fields of the rows a batch carries, in the order `rows_of` reads them.
INSERT_FIELDS: Final = (
    ("id", "text"),
    ("name", "text"),
    ("queue", "text"),
    ("payload", "text"),
    ("priority", "integer"),
    ("max_retries", "integer"),
    ("timeout", "float8"),
    ("key", "text"),
    ("created", "float8"),
    ("due", "float8"),
    ("relative", "boolean"),
    ("headers", "text"),
)
OUTCOME_FIELDS: Final = (
    ("id", "text"),
    ("token", "text"),
    ("kind", "text"),
    ("at", "float8"),
    ("result", "text"),
    ("error", "text"),
    ("run_at", "float8"),
    ("retry_in", "float8"),
    ("logs", "text"),
    ("progress", "float8"),
    ("traceback", "text"),
    ("timed_out", "boolean"),
)
BEAT_FIELDS: Final = (("id", "text"), ("token", "text"), ("logs", "text"))


def rows_of(fields: tuple[tuple[str, str], ...]) -> str:
    """A batch as rows: %(rows)s is one JSON array of arrays, each holding
    `fields` in order (and `ord`, its place in the batch, counted from 1).
    One json.dumps on the client and one parse on the server cost far less
    than a typed array per field, which psycopg adapts value by value.
    Numbers keep every digit (JSON numbers are exact decimals in jsonb)."""
    columns = ", ".join(
        f"r ->> {i} AS {name}" if kind == "text" else f"(r ->> {i})::{kind} AS {name}"
        for i, (name, kind) in enumerate(fields)
    )
    return (
        f"SELECT {columns}, ord"
        " FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS e(r, ord)"
    )


# A NOTIFY's payload names the queue and the job name of the new work,
# joined by this separator (neither holds a control character).
WAKE_SEPARATOR: Final = "\x1f"


def wake_payload(queue: str, name: str) -> str:
    return f"{queue}{WAKE_SEPARATOR}{name}"


class Statements:
    """Every statement of one schema (`s` is its quoted name), built on
    first use and kept."""

    def __init__(self, s: str) -> None:
        self.s = s

    # ------------------------------------------------------------ producing

    @cached_property
    def insert(self) -> str:
        # A delay measured on the producer's clock (`relative`) is counted
        # from the server's now. ON CONFLICT names the key index only, so a
        # clashing job id still fails loudly. The trigger NOTIFYs on commit.
        return f"""
WITH now AS (SELECT {NOW} AS t),
new AS (
    SELECT n.*, CASE WHEN n.relative THEN now.t ELSE n.created END AS c,
           CASE WHEN n.relative THEN n.due + (now.t - n.created) ELSE n.due END AS r, now.t
    FROM ({rows_of(INSERT_FIELDS)}) AS n, now
)
INSERT INTO {self.s}.jobs AS j (id, name, queue, payload, state, priority, max_retries,
                                 timeout, key, created_at, run_at, headers)
SELECT id, name, queue, payload, CASE WHEN r > t THEN 'scheduled' ELSE 'queued' END, priority,
       max_retries, timeout, key, c, r, headers
FROM new ORDER BY ord
ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING
RETURNING j.id, j.state, j.created_at, j.run_at"""

    @cached_property
    def by_keys(self) -> str:
        return f"SELECT {COLS} FROM {self.s}.jobs WHERE key = ANY(%(keys)s::text[])"

    # ------------------------------------------------------------ consuming

    def exchange(self, by_name: bool, finish: bool) -> str:
        """A claim, after the outcomes of a batch when `finish`: one statement.

        Lease up to %(limit)s jobs in claim order: queued ones and due
        scheduled ones, the rest of which (other names, beyond the limit) are
        promoted to queued in the same statement. By name: one walk of the
        claim index per (queue, name) pair, each stopping after `limit`
        unlocked rows, then a merge of at most pairs * limit rows: never a
        sort of the backlog, so the cost stays flat as it grows. Without
        names (admin and test callers) a queue's rows are sorted.

        Rows: ('c', NULL, the columns of a claimed job) per job, then with
        `finish` one ('f', [[id, token, queue, new state] per accepted
        outcome], NULL...)."""
        names = "(%(names)s::text[] IS NULL OR name = ANY(%(names)s::text[]))"
        if by_name:
            queued = f"""
        SELECT p.row, p.seq, p.priority, p.run_at FROM unnest(%(queues)s::text[]) AS q(queue)
        CROSS JOIN unnest(%(names)s::text[]) AS n(name)
        CROSS JOIN LATERAL (
            SELECT ctid AS row, seq, priority, run_at FROM {self.s}.jobs
            WHERE state = 'queued' AND queue = q.queue AND name = n.name
            ORDER BY priority, run_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS p"""
        else:
            queued = f"""
        SELECT * FROM (SELECT ctid AS row, seq, priority, run_at FROM {self.s}.jobs
            WHERE state = 'queued' AND queue = ANY(%(queues)s::text[])
            ORDER BY priority, run_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS p"""
        fin = f"fin AS ({self._finish_update}),\n" if finish else ""
        nulls = ", ".join(f"NULL::{t}" for t in COL_TYPES)
        outcomes = (
            "\nUNION ALL SELECT 'f', (SELECT coalesce(jsonb_agg(jsonb_build_array("
            f"id, token, queue, state, name)), '[]'::jsonb) FROM fin), {nulls} FROM cfg"
            if finish
            else ""
        )
        # SKIP LOCKED: workers promoting at once split the due jobs rather
        # than one waiting on another's row locks.
        return f"""
WITH now AS (SELECT {NOW} AS t), cfg AS ({LAZY_COMMIT}),
{fin}due AS (
    SELECT ctid AS row, seq, priority, run_at, name FROM {self.s}.jobs
    WHERE state = 'scheduled' AND run_at <= (SELECT t FROM now)
      AND queue = ANY(%(queues)s::text[])
    ORDER BY run_at LIMIT {PROMOTE_BATCH} FOR UPDATE SKIP LOCKED),
picked AS (
    SELECT row FROM ({queued}
        UNION ALL SELECT row, seq, priority, run_at FROM due WHERE {names}) AS c
    ORDER BY priority, run_at, seq LIMIT %(limit)s),
promoted AS (
    UPDATE {self.s}.jobs SET state = 'queued'
    WHERE ctid = ANY(ARRAY(SELECT row FROM due EXCEPT SELECT row FROM picked))),
claimed AS (
    UPDATE {self.s}.jobs AS j SET {_LEASE}
    FROM picked, now WHERE j.ctid = picked.row
    RETURNING {_qualified(COLS)})
SELECT 'c', NULL::jsonb, claimed.* FROM claimed, cfg{outcomes}"""

    @cached_property
    def claim_ids(self) -> str:
        """A broker's store (base.DeliveryStore) leases the jobs whose ids
        the broker delivered, each only if queued, whatever its name,
        priority or run_at; rows: their columns. The rows are locked in seq
        order (and waited for, not skipped: a job some other statement holds
        may still be queued when it lets go), so two calls sharing ids cannot
        deadlock; an id listed twice matches its row once."""
        return f"""
WITH now AS (SELECT {NOW} AS t), cfg AS ({LAZY_COMMIT}),
picked AS (
    SELECT seq FROM {self.s}.jobs WHERE id = ANY(%(ids)s::text[]) AND state = 'queued'
    ORDER BY seq FOR UPDATE)
UPDATE {self.s}.jobs AS j SET {_LEASE}
FROM picked, now, cfg WHERE j.seq = picked.seq AND j.state = 'queued'
RETURNING {_qualified(COLS)}"""

    @cached_property
    def release_due(self) -> str:
        """A broker's store moves up to %(limit)s due scheduled jobs of
        %(queues)s to queued, earliest first; rows: their columns. SKIP
        LOCKED: two callers at once split the due jobs, and a row another
        caller released meanwhile fails the state check and is skipped."""
        return f"""
WITH now AS (SELECT {NOW} AS t), due AS (
    SELECT ctid AS row FROM {self.s}.jobs
    WHERE state = 'scheduled' AND run_at <= (SELECT t FROM now)
      AND queue = ANY(%(queues)s::text[])
    ORDER BY run_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
UPDATE {self.s}.jobs AS j SET state = 'queued' FROM due WHERE j.ctid = due.row
RETURNING {_qualified(COLS)}"""

    @cached_property
    def heartbeat(self) -> str:
        return f"""
WITH now AS (SELECT {NOW} AS t), cfg AS ({LAZY_COMMIT})
UPDATE {self.s}.jobs AS j SET lease_until = now.t + %(lease)s, {_append_logs("b.logs", "j.")}
FROM ({rows_of(BEAT_FIELDS)}) AS b, now, cfg
WHERE j.id = b.id AND j.state = 'running' AND j.token = b.token AND j.lease_until >= now.t
RETURNING j.id, b.token, j.cancel_requested"""

    @cached_property
    def finish(self) -> str:
        """The outcomes of a batch; rows (id, token, queue, new state) of
        the accepted ones."""
        return f"WITH now AS (SELECT {NOW} AS t), cfg AS ({LAZY_COMMIT}) {self._finish_update}"

    @cached_property
    def _finish_update(self) -> str:
        """Every outcome of a batch in one UPDATE (`now` and `cfg` are the
        enclosing statement's). `k` is the outcome's kind,
        turned into `cancelled` when a cancel was requested and the attempt
        would have run again (a cancel outlives the attempt); `rt` is a
        retry's run_at, `since` the time it is compared with for its state."""
        cancelled = "(j.cancel_requested AND o.kind IN ('queued', 'scheduled'))"
        k = f"(CASE WHEN {cancelled} THEN 'cancelled' ELSE o.kind END)"
        rt = (
            "(CASE WHEN o.retry_in IS NOT NULL THEN now.t + o.retry_in"
            " ELSE coalesce(o.run_at, o.at) END)"
        )
        since = "(CASE WHEN o.retry_in IS NOT NULL THEN now.t ELSE o.at END)"
        final_error = "coalesce(o.error, CASE WHEN j.cancel_requested THEN 'cancelled' END)"
        error = (
            f"CASE {k} WHEN 'completed' THEN NULL WHEN 'queued' THEN NULL"
            f" WHEN 'scheduled' THEN o.error ELSE {final_error} END"
        )
        outcome = (
            f"CASE {k} WHEN 'completed' THEN '{_A.COMPLETED.value}'"
            f" WHEN 'queued' THEN '{_A.HANDED_BACK.value}'"
            f" WHEN 'cancelled' THEN '{_A.CANCELLED.value}'"
            f" WHEN 'failed' THEN CASE WHEN o.timed_out THEN '{_A.TIMED_OUT.value}'"
            f" ELSE '{_A.FAILED.value}' END"
            f" ELSE CASE WHEN o.timed_out THEN '{_A.TIMED_OUT.value}'"
            f" ELSE '{_A.RETRYING.value}' END END"
        )
        return f"""
UPDATE {self.s}.jobs AS j SET
    {_history("o.at", outcome, error, "j.")},
    state = CASE {k} WHEN 'scheduled' THEN CASE WHEN {rt} > {since} THEN 'scheduled'
                 ELSE 'queued' END ELSE {k} END,
    finished_at = CASE WHEN {k} IN ('completed', 'failed', 'cancelled') THEN o.at
                  ELSE j.finished_at END,
    result = CASE WHEN {k} IN ('completed', 'failed', 'cancelled') THEN o.result
             ELSE j.result END,
    error = CASE {k} WHEN 'completed' THEN NULL WHEN 'queued' THEN j.error
            WHEN 'scheduled' THEN o.error ELSE {final_error} END,
    traceback = CASE {k} WHEN 'completed' THEN NULL WHEN 'failed' THEN o.traceback
                WHEN 'scheduled' THEN o.traceback ELSE j.traceback END,
    attempts = CASE WHEN {k} = 'queued' THEN j.attempts - 1 ELSE j.attempts END,
    started_at = CASE WHEN {k} = 'queued' THEN NULL ELSE j.started_at END,
    run_at = CASE {k} WHEN 'scheduled' THEN {rt} WHEN 'queued' THEN o.at ELSE j.run_at END,
    progress = CASE WHEN {k} = 'completed' THEN 100.0 ELSE coalesce(o.progress, j.progress) END,
    {_append_logs("o.logs", "j.")},
    token = NULL
FROM ({rows_of(OUTCOME_FIELDS)}) AS o, now, cfg
WHERE j.id = o.id AND j.state = 'running' AND j.token = o.token
RETURNING j.id, o.token, j.queue, j.state, j.name"""

    @cached_property
    def trim(self) -> str:
        # The newest %(keep)s jobs of one (queue, state) stay; the rest go,
        # at most a batch per statement so one trim never holds many locks.
        return f"""
DELETE FROM {self.s}.jobs WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {self.s}.jobs WHERE queue = %(queue)s AND state = %(state)s
    ORDER BY finished_at DESC, seq DESC OFFSET %(keep)s LIMIT %(batch)s))"""

    @cached_property
    def progress(self) -> str:
        return f"""
UPDATE {self.s}.jobs SET progress = coalesce(%(progress)s, progress),
    {_append_logs("%(logs)s::text")}
WHERE id = %(id)s AND state = 'running' AND token = %(token)s"""

    @cached_property
    def unclaim(self) -> str:
        return f"""
WITH now AS (SELECT {NOW} AS t), cfg AS ({LAZY_COMMIT})
UPDATE {self.s}.jobs AS j SET
    {
            _history(
                "now.t",
                f"CASE WHEN j.cancel_requested THEN '{_A.CANCELLED.value}'"
                f" ELSE '{_A.HANDED_BACK.value}' END",
                "NULL",
                "j.",
            )
        },
    token = NULL,
    state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
    attempts = CASE WHEN j.cancel_requested THEN j.attempts ELSE j.attempts - 1 END,
    started_at = CASE WHEN j.cancel_requested THEN j.started_at END,
    run_at = CASE WHEN j.cancel_requested THEN j.run_at ELSE now.t END,
    finished_at = CASE WHEN j.cancel_requested THEN now.t ELSE j.finished_at END,
    error = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE j.error END
FROM now, cfg WHERE j.state = 'running' AND j.token = %(token)s
RETURNING j.queue, j.state, j.name"""

    @cached_property
    def recover(self) -> str:
        # `j.stalls + 1` is the new stall count: the right-hand sides see the
        # old row. A job whose cancel was requested ends cancelled.
        over = "j.stalls + 1 > %(max_stalled)s"
        ends = f"(j.cancel_requested OR {over})"
        lost = "'lease expired at attempt ' || j.attempts || ' (worker lost)'"
        return f"""
WITH now AS (SELECT {NOW} AS t), cfg AS ({LAZY_COMMIT}), expired AS (
    SELECT ctid AS row FROM {self.s}.jobs, now WHERE state = 'running' AND lease_until < now.t
    FOR UPDATE SKIP LOCKED)
UPDATE {self.s}.jobs AS j SET
    {_history("now.t", "'stalled'", lost, "j.")},
    token = NULL,
    stalls = j.stalls + 1,
    state = CASE WHEN j.cancel_requested THEN 'cancelled'
                 WHEN {over} THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN {ends} THEN now.t ELSE j.finished_at END,
    error = CASE WHEN j.cancel_requested THEN 'cancelled'
                 WHEN {over} THEN 'lease expired ' || (j.stalls + 1)
                      || ' times (worker lost); max_stalled is ' || %(max_stalled)s
                 ELSE j.error END,
    run_at = CASE WHEN {ends} THEN j.run_at ELSE now.t END,
    started_at = CASE WHEN {ends} THEN j.started_at END
FROM expired, now, cfg WHERE j.ctid = expired.row
RETURNING {_qualified(COLS)}"""

    @cached_property
    def notify(self) -> str:
        """Wake the workers of these (queue, job name) pairs, each as the
        payload `wake_payload` makes (jobs became claimable by an UPDATE,
        which the insert trigger does not see)."""
        return "SELECT pg_notify(%(channel)s, w) FROM unnest(%(wakes)s::text[]) AS w"

    # ------------------------------------------------------------ waiting

    @cached_property
    def probe(self) -> str:
        """(a queued job of these queues [and names] exists, the earliest
        run_at of their scheduled jobs)."""
        return f"""
SELECT EXISTS (SELECT 1 FROM {self.s}.jobs WHERE state = 'queued'
               AND queue = ANY(%(queues)s::text[])
               AND (%(names)s::text[] IS NULL OR name = ANY(%(names)s::text[]))),
       (SELECT run_at FROM {self.s}.jobs WHERE state = 'scheduled'
        AND queue = ANY(%(queues)s::text[]) ORDER BY run_at LIMIT 1),
       extract(epoch FROM statement_timestamp())::float8"""

    # ------------------------------------------------------------ administering

    @cached_property
    def retry(self) -> str:
        # A failed job gets exactly one more attempt; a cancelled one resumes
        # with what was left of its retries (at least one attempt).
        return f"""
UPDATE {self.s}.jobs SET state = 'queued', max_retries = CASE state
    WHEN 'failed' THEN attempts ELSE greatest(max_retries, attempts) END,
    run_at = {NOW}, finished_at = NULL, stalls = 0, token = NULL
WHERE id = %(id)s AND state IN ('failed', 'cancelled') RETURNING {COLS}"""

    @cached_property
    def cancel(self) -> str:
        # The row is locked by the first CTE, so a claim cannot slip between
        # reading the state and acting on it. The UPDATE finds the row by id,
        # not by the ctid the lock returned: when a heartbeat committed a new
        # version of the row while this waited for the lock, that version is
        # invisible to the statement's snapshot, a ctid join matches nothing,
        # and the cancel was lost though reported as requested.
        return f"""
WITH cur AS (SELECT state FROM {self.s}.jobs WHERE id = %(id)s FOR UPDATE),
changed AS (
    UPDATE {self.s}.jobs AS j SET
        cancel_requested = j.cancel_requested OR cur.state = 'running',
        state = CASE WHEN cur.state = 'running' THEN j.state ELSE 'cancelled' END,
        finished_at = CASE WHEN cur.state = 'running' THEN j.finished_at ELSE {NOW} END,
        error = CASE WHEN cur.state = 'running' THEN j.error ELSE 'cancelled' END
    FROM cur WHERE j.id = %(id)s AND cur.state IN ('scheduled', 'queued', 'running')
    RETURNING 1)
SELECT cur.state, (SELECT count(*) FROM changed) FROM cur"""

    @cached_property
    def withdraw(self) -> str:
        return f"""
DELETE FROM {self.s}.jobs WHERE id = ANY(%(ids)s::text[]) AND state IN ('queued', 'scheduled')
  AND attempts = 0
RETURNING id"""

    @cached_property
    def purge(self) -> str:
        return f"""
DELETE FROM {self.s}.jobs WHERE state = ANY(%(states)s::text[]) AND state <> 'running'
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(older_than)s::float8 IS NULL OR
       (CASE WHEN state IN ('scheduled', 'queued') THEN created_at ELSE finished_at END)
       < %(older_than)s)"""

    # ------------------------------------------------------------ stores

    @cached_property
    def schedule_put(self) -> str:
        marks = ", ".join(f"%({c.strip()})s" for c in SCHEDULE_COLS.split(","))
        updates = ", ".join(
            f"{c.strip()} = excluded.{c.strip()}" for c in SCHEDULE_COLS.split(",")[1:]
        )
        return (
            f"INSERT INTO {self.s}.schedules ({SCHEDULE_COLS}) VALUES ({marks})"
            f" ON CONFLICT (name) DO UPDATE SET {updates}"
        )

    @cached_property
    def schedule_replace(self) -> str:
        """schedule_put's compare-and-set: the row, only while it still has
        the next run and enabled read before (ScheduleStore.schedule_put)."""
        sets = ", ".join(f"{c.strip()} = %({c.strip()})s" for c in SCHEDULE_COLS.split(",")[1:])
        return (
            f"UPDATE {self.s}.schedules SET {sets} WHERE name = %(name)s"
            " AND next_run = %(expected_next_run)s AND enabled = %(expected_enabled)s"
        )

    @cached_property
    def schedule_fire(self) -> str:
        return f"""
UPDATE {self.s}.schedules SET next_run = %(next_run)s,
    last_run = coalesce(%(last_run)s, last_run), last_error = %(last_error)s
WHERE name = %(name)s AND enabled AND next_run = %(expected)s"""

    @cached_property
    def lock_acquire(self) -> str:
        # The upsert's WHERE leaves a live holder's row alone: no row changes.
        return f"""
WITH now AS (SELECT {NOW} AS t)
INSERT INTO {self.s}.locks AS l (key, token, expires)
SELECT %(key)s, %(token)s, now.t + %(ttl)s FROM now
ON CONFLICT (key) DO UPDATE SET token = excluded.token, expires = excluded.expires
WHERE l.expires <= (SELECT t FROM now)"""

    @cached_property
    def lock_extend(self) -> str:
        return f"""
WITH now AS (SELECT {NOW} AS t)
UPDATE {self.s}.locks AS l SET expires = now.t + %(ttl)s FROM now
WHERE l.key = %(key)s AND l.token = %(token)s AND l.expires > now.t"""

    @cached_property
    def lock_release(self) -> str:
        return f"""
DELETE FROM {self.s}.locks WHERE key = %(key)s AND token = %(token)s
AND expires > {NOW}"""

    @cached_property
    def cache_set(self) -> str:
        return f"""
INSERT INTO {self.s}.cache (key, value, expires)
VALUES (%(key)s, %(value)s, {NOW} + %(ttl)s::float8)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"""

    @cached_property
    def cache_get(self) -> str:
        # An expired entry reads as missing; it is deleted by the next write
        # to its key or by the backend's maintenance.
        return (
            f"SELECT value FROM {self.s}.cache WHERE key = %(key)s"
            f" AND (expires IS NULL OR expires > {NOW})"
        )

    @cached_property
    def worker_beat(self) -> str:
        # Records of workers that died without saying goodbye go here, once
        # they have been shown as stale for STALE_WORKER_KEPT seconds.
        return f"""
WITH now AS (SELECT {NOW} AS t),
gone AS (DELETE FROM {self.s}.workers AS w USING now
         WHERE w.expires <= now.t - {STALE_WORKER_KEPT!r})
INSERT INTO {self.s}.workers
    (id, host, pid, queues, names, started_at, last_seen, expires, details)
SELECT %(id)s, %(host)s, %(pid)s, %(queues)s::jsonb, %(names)s::jsonb, %(started_at)s,
       %(last_seen)s, now.t + %(ttl)s, %(details)s::jsonb FROM now
ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
    queues = excluded.queues, names = excluded.names, started_at = excluded.started_at,
    last_seen = excluded.last_seen, expires = excluded.expires, details = excluded.details"""


def _qualified(cols: str) -> str:
    """COLS as `j.col, ...` for a RETURNING after a FROM list."""
    return ", ".join(f"j.{c.strip()}" for c in cols.split(","))
