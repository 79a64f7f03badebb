"""The PostgreSQL backend's schema, as versioned migrations.

A database gets the schema by running every migration in order, in one
transaction each, recorded in `<schema>.migrations`; `conveyor migrate`
runs (or with `--dry-run` prints) the pending ones, and the backend runs
them on first use unless the URL says `migrate=false`. Several processes
starting at once take turns on an advisory lock, so each migration runs once.
A schema newer than this code knows is refused: an old worker must not run
on tables it does not understand.

Statements are templates: `{s}` is the schema (a quoted identifier) and
`{channel}` the NOTIFY channel of its jobs (a string literal).

Design notes, for whoever adds a migration:

* Times are epoch seconds in `double precision`, as the Backend protocol
  speaks them; payloads and results are the JSON text the engine sent
  (stored as `text`: kept byte for byte, no re-encoding on the hot path).
  Log lines and the attempt history are `jsonb` arrays, appended in SQL.
* Partial indexes hold only the rows each hot query reads: the claim index
  only queued jobs, the due index only scheduled ones, the running index only
  running ones. So an insert touches few indexes and a claim walks a small one.
* The cache is an UNLOGGED table: it is lost on a crash of the server (which
  a cache may be) and its writes cost no WAL.
* An AFTER INSERT trigger NOTIFYs the (queue, job name) pairs of new jobs
  (`queue || chr(31) || name`, as sql.py's `wake_payload`), so an enqueue made
  on any connection (the caller's own, in `enqueue(..., connection=)`) wakes
  idle workers when its transaction commits, and never if it rolls back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from psycopg import sql


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]

    def render(self, schema: str, channel: str) -> list[str]:
        return [s.format(s=schema, channel=channel) for s in self.statements]


# Created before any migration runs (not a migration itself: it records them).
BOOKKEEPING: Final = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE IF NOT EXISTS {s}.migrations ("
    " version integer PRIMARY KEY,"
    " description text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())",
)

MIGRATIONS: Final = (
    Migration(
        1,
        "jobs, recurring schedules, locks, cache and worker presence",
        (
            """
CREATE TABLE {s}.jobs (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- enqueue order
    id               text NOT NULL UNIQUE,
    name             text NOT NULL,
    queue            text NOT NULL,
    payload          text NOT NULL,           -- JSON text
    state            text NOT NULL CHECK (state IN
                       ('scheduled', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    priority         integer NOT NULL,
    max_retries      integer NOT NULL,
    timeout          double precision,
    key              text,                    -- the idempotency key
    created_at       double precision NOT NULL,
    run_at           double precision NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    result           text,                    -- JSON text
    error            text,
    progress         double precision NOT NULL DEFAULT 0,
    started_at       double precision,
    finished_at      double precision,
    lease_until      double precision NOT NULL DEFAULT 0,
    stalls           integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    logs             jsonb NOT NULL DEFAULT '[]',
    token            text,                    -- the fencing token of the current claim
    traceback        text,
    history          jsonb NOT NULL DEFAULT '[]'
)""",
            # Claims by (queue, job name) in claim order; a worker claims by
            # the names it has handlers for, so other names cost it nothing.
            "CREATE INDEX jobs_claim ON {s}.jobs (queue, name, priority, run_at, seq)"
            " WHERE state = 'queued'",
            "CREATE INDEX jobs_due ON {s}.jobs (run_at) WHERE state = 'scheduled'",
            "CREATE INDEX jobs_running ON {s}.jobs (lease_until) WHERE state = 'running'",
            "CREATE UNIQUE INDEX jobs_key ON {s}.jobs (key) WHERE key IS NOT NULL",
            # Retention (the newest finished jobs of a queue), purge, lists.
            "CREATE INDEX jobs_finished ON {s}.jobs (queue, state, finished_at, seq)"
            " WHERE state IN ('completed', 'failed', 'cancelled')",
            """
CREATE FUNCTION {s}.notify_new_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, queue || chr(31) || name)
        FROM (SELECT DISTINCT queue, name FROM new_jobs) AS q;
    RETURN NULL;
END
$$""",
            "CREATE TRIGGER jobs_notify AFTER INSERT ON {s}.jobs"
            " REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT"
            " EXECUTE FUNCTION {s}.notify_new_jobs()",
            """
CREATE TABLE {s}.schedules (
    name          text PRIMARY KEY,
    job_name      text NOT NULL,
    payload       text NOT NULL,            -- JSON text
    cron          text,
    every         double precision,         -- seconds
    tz            text NOT NULL,
    key           text,
    enabled       boolean NOT NULL,
    next_run      double precision NOT NULL, -- the compare-and-set field
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL,
    last_run      double precision,
    last_error    text,
    catch_up      text NOT NULL,
    max_catch_up  integer NOT NULL,
    misfire_grace double precision NOT NULL,
    options       text NOT NULL             -- JSON: enqueue options
)""",
            "CREATE INDEX schedules_due ON {s}.schedules (next_run) WHERE enabled",
            "CREATE TABLE {s}.locks ("
            " key text PRIMARY KEY, token text NOT NULL, expires double precision NOT NULL)",
            "CREATE UNLOGGED TABLE {s}.cache ("
            " key text PRIMARY KEY, value text NOT NULL, expires double precision)",
            "CREATE TABLE {s}.workers ("
            " id text PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,"
            " queues jsonb NOT NULL, names jsonb NOT NULL,"
            " started_at double precision NOT NULL, last_seen double precision NOT NULL,"
            " expires double precision NOT NULL)",
        ),
    ),
    Migration(
        2,
        "paused queues; worker presence with concurrency and running jobs",
        (
            # Workers read the set every second and leave these queues out of
            # their claims; the claim statements themselves do not look at it.
            "CREATE TABLE {s}.paused_queues ("
            " queue text PRIMARY KEY, paused_at double precision NOT NULL)",
            # WorkerInfo.details(): {"concurrency": n, "running": [[id, name, started_at]]}.
            "ALTER TABLE {s}.workers ADD COLUMN details jsonb",
        ),
    ),
)

LATEST: Final = MIGRATIONS[-1].version

# What undoes each migration, for a downgrade in the application's own
# migrations (conveyor.contrib): keep one entry per migration, in step with
# MIGRATIONS (tests/unit/test_schema_in_app_migrations.py checks that a full
# downgrade leaves the schema empty). The backend itself never downgrades.
REMOVALS: Final = {
    1: (
        "DROP TABLE IF EXISTS {s}.jobs, {s}.schedules, {s}.locks, {s}.cache, {s}.workers",
        "DROP FUNCTION IF EXISTS {s}.notify_new_jobs()",
    ),
}


def pending(applied: int) -> list[Migration]:
    """The migrations a schema at version `applied` still needs, in order."""
    return [m for m in MIGRATIONS if m.version > applied]


def channel_of(schema: str) -> str:
    """The NOTIFY channel of the jobs of `schema` (unquoted)."""
    return f"conveyor:{schema}"


def migration_sql(schema: str, after: int, upto: int = LATEST) -> list[tuple[int, str, list[str]]]:
    """(version, description, statements) of the migrations that bring
    `schema` from version `after` to `upto`, each recorded in the schema's
    migrations table as the backend records its own, so that the backend
    finds them applied: for `conveyor migrate --dry-run`, a DBA, and the
    application's own migrations (conveyor.contrib.alembic, .django). The
    bookkeeping table comes first; a statement has no parameters to bind."""
    if not 0 <= after <= upto <= LATEST:
        raise ValueError(
            f"conveyor's PostgreSQL schema versions go from 0 to {LATEST}: cannot go "
            f"from {after} to {upto}"
        )
    s = sql.Identifier(schema).as_string(None)
    channel = sql.Literal(channel_of(schema)).as_string(None)
    out: list[tuple[int, str, list[str]]] = []
    for m in MIGRATIONS[after:upto]:
        statements = [b.format(s=s) for b in BOOKKEEPING] if not out else []
        statements += m.render(s, channel)
        statements.append(
            f"INSERT INTO {s}.migrations (version, description)"
            f" VALUES ({m.version}, {sql.Literal(m.description).as_string(None)})"
        )
        out.append((m.version, m.description, statements))
    return out


def removal_sql(schema: str, upto: int, after: int) -> list[str]:
    """The statements that take `schema` back from version `upto` to `after`
    (0: no conveyor objects left), newest migration first; what they drop
    holds jobs, so this is for the application's downgrade() only."""
    if not 0 <= after <= upto <= LATEST:
        raise ValueError(
            f"conveyor's PostgreSQL schema versions go from 0 to {LATEST}: cannot go "
            f"back from {upto} to {after}"
        )
    s = sql.Identifier(schema).as_string(None)
    statements = []
    for version in range(upto, after, -1):
        statements += [r.format(s=s) for r in REMOVALS[version]]
        statements.append(f"DELETE FROM {s}.migrations WHERE version = {version}")
    if after == 0:
        statements.append(f"DROP TABLE IF EXISTS {s}.migrations")
    return statements
