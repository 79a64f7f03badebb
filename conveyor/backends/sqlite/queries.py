"""Thread-side functions of the SQLite backend: each runs on the connection
thread with its connection (`conn`), inside a write transaction where it
changes anything. The backend hands them to its thread with `_call`."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import CancelResult, NewJob
from conveyor.backends.records import present_workers, stored_worker
from conveyor.backends.sqlite.rows import new_job_record, row_to_job
from conveyor.backends.sqlite.sql import (
    COLS,
    INSERT,
    PURGE,
    SCHEDULE_PUT,
    SELECT_BY_KEYS,
    SELECT_RUNNING,
)
from conveyor.backends.sqlite.writer import write_transaction
from conveyor.backends.stores import STALE_WORKER_KEPT, ScheduleRecord, WorkerInfo
from conveyor.job import InvalidOptionError, Job, JobState


def insert(conn: sqlite3.Connection, jobs: Sequence[NewJob], now: float) -> tuple[list[Job], int]:
    """Store jobs inside the caller's write transaction; (one record per
    input, how many rows were inserted). Keys are screened first, so the
    batch is one executemany and a bad row fails all of it."""
    keys = [new.key for new in jobs if new.key is not None]
    out: list[Job] = []
    rows: list[tuple[Any, ...]] = []
    scheduled, queued = JobState.SCHEDULED, JobState.QUEUED
    existing: dict[str, Sequence[Any]] = {}
    if keys:
        for row in conn.execute(SELECT_BY_KEYS, (json.dumps(keys),)):
            existing[row[9]] = row
    first: dict[str, NewJob] = {}  # key -> its first occurrence in this batch
    for new in jobs:
        key = new.key
        if key is not None:
            if key in existing:
                out.append(row_to_job(existing[key], duplicate=True))
                continue
            if key in first:
                dup_of = first[key]
                state = scheduled if dup_of.run_at > now else queued
                out.append(new_job_record(dup_of, state, duplicate=True))
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
                new.headers,
            )
        )
        out.append(new_job_record(new, state))
    try:
        conn.executemany(INSERT, rows)
    except sqlite3.IntegrityError as exc:
        # Keys were screened above, so this is a clashing job id.
        raise InvalidOptionError(f"cannot enqueue: {exc} (job ids must be unique)") from exc
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
        raise InvalidOptionError(f"cannot enqueue: a field has a bad type: {exc}") from exc
    return out, len(rows)


def probe(
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


def running_rows(conn: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """id -> (id, seq, token, queue, lease_until, cancel_requested) of the
    given jobs that are running."""
    return {row[0]: row for row in conn.execute(SELECT_RUNNING, (json.dumps(ids),))}


def list_jobs(
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
        f"SELECT {COLS} FROM conveyor_jobs {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
        (*params, max(limit, 0), max(offset, 0)),
    ).fetchall()
    return [row_to_job(row) for row in rows]


def cancel(conn: sqlite3.Connection, job_id: str, now: float) -> CancelResult:
    with write_transaction(conn):
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


def stats(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for queue, state, count in conn.execute(
        "SELECT queue, state, count(*) FROM conveyor_jobs GROUP BY queue, state"
    ):
        counts = out.get(queue)
        if counts is None:
            counts = out[queue] = {s.value: 0 for s in JobState}
        counts[state] = count
    return out


def purge(
    conn: sqlite3.Connection, states: str, older_than: float | None, queue: str | None
) -> int:
    with write_transaction(conn):
        removed: int = conn.execute(PURGE, (states, queue, older_than)).rowcount
    return removed


def write_count(conn: sqlite3.Connection, sql: str, *params: Any) -> int:
    """One write statement in its own transaction; how many rows it changed."""
    with write_transaction(conn):
        changed: int = conn.execute(sql, params).rowcount
    return changed


def write_rows(conn: sqlite3.Connection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One write statement with RETURNING in its own transaction; its rows."""
    with write_transaction(conn):
        rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
    return rows


def write_one(conn: sqlite3.Connection, sql: str, *params: Any) -> bool:
    """One write statement in its own transaction; True if it changed a row."""
    with write_transaction(conn):
        changed: int = conn.execute(sql, params).rowcount
    return changed > 0


def schedule_put(
    conn: sqlite3.Connection, record: ScheduleRecord, expected: ScheduleRecord | None = None
) -> bool:
    with write_transaction(conn):
        if expected is not None:
            stored = conn.execute(
                "SELECT next_run, enabled FROM conveyor_schedules WHERE name = ?1", (record.name,)
            ).fetchone()
            if stored is None or (stored[0], bool(stored[1])) != (
                expected.next_run,
                expected.enabled,
            ):
                return False
        conn.execute(
            SCHEDULE_PUT,
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
    return True


def schedules(conn: sqlite3.Connection, sql: str, *params: Any) -> list[ScheduleRecord]:
    records: list[ScheduleRecord] = []
    for row in conn.execute(sql, params):
        record = ScheduleRecord(*row)
        record.enabled = bool(record.enabled)
        records.append(record)
    return records


def cache_delete(conn: sqlite3.Connection, key: str, now: float) -> bool:
    with write_transaction(conn):
        row = conn.execute(
            "DELETE FROM conveyor_cache WHERE key = ?1 RETURNING expires", (key,)
        ).fetchone()
    return row is not None and (row[0] is None or row[0] > now)


def cache_get(conn: sqlite3.Connection, key: str, now: float) -> str | None:
    row = conn.execute(
        "SELECT value, expires FROM conveyor_cache WHERE key = ?1", (key,)
    ).fetchone()
    if row is None:
        return None
    value, expires = row
    if expires is not None and expires <= now:
        # Expired entries go when they are next read, as in the memory backend.
        with write_transaction(conn):
            conn.execute("DELETE FROM conveyor_cache WHERE key = ?1 AND expires <= ?2", (key, now))
        return None
    text: str = value
    return text


def worker_beat(conn: sqlite3.Connection, info: WorkerInfo, expires: float, now: float) -> None:
    with write_transaction(conn):
        # Records of workers that died without saying goodbye go here, once
        # they have been shown as stale for a while.
        conn.execute("DELETE FROM conveyor_workers WHERE expires <= ?1", (now - STALE_WORKER_KEPT,))
        conn.execute(
            "INSERT OR REPLACE INTO conveyor_workers"
            " (id, host, pid, queues, names, started_at, last_seen, expires, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.id,
                info.host,
                info.pid,
                json.dumps(info.queues),
                json.dumps(info.names),
                info.started_at,
                info.last_seen,
                expires,
                json.dumps(info.details()),
            ),
        )


def workers(conn: sqlite3.Connection, now: float, include_stale: bool) -> list[WorkerInfo]:
    rows = conn.execute(
        "SELECT id, host, pid, queues, names, started_at, last_seen, details, expires"
        " FROM conveyor_workers WHERE expires > ?1",
        (now - STALE_WORKER_KEPT if include_stale else now,),
    )
    records = [
        (
            stored_worker(
                id=id,
                host=host,
                pid=pid,
                queues=json.loads(queues),
                names=json.loads(names),
                started_at=start,
                last_seen=seen,
                details=json.loads(details) if details else None,
            ),
            expires,
        )
        for id, host, pid, queues, names, start, seen, details, expires in rows
    ]
    return present_workers(records, now, include_stale)


def paused_queues(conn: sqlite3.Connection) -> set[str]:
    return {queue for (queue,) in conn.execute("SELECT queue FROM conveyor_paused")}


def queued_by_name(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for queue, name, count in conn.execute(
        "SELECT queue, name, count(*) FROM conveyor_jobs INDEXED BY conveyor_jobs_claim_name"
        " WHERE state = 'queued' GROUP BY queue, name"
    ):
        out.setdefault(queue, {})[name] = count
    return out
