"""Storing jobs on a connection: the backend's own, or the caller's inside
its transaction (`enqueue(..., connection=)`), async or blocking."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from conveyor.backends.base import NewJob
from conveyor.backends.postgres.sql import Statements
from conveyor.backends.records import STATES, new_job, row_to_job
from conveyor.job import InvalidOptionError, Job


async def insert(q: Statements, conn: Any, jobs: Sequence[NewJob]) -> list[Job]:
    """Store jobs on `conn` (ours, or the caller's inside its transaction)."""
    first: dict[str, int] = {}  # key -> index of its first occurrence
    store: list[NewJob] = []
    for index, new in enumerate(jobs):
        if new.key is not None:
            if new.key in first:
                continue
            first[new.key] = index
        store.append(new)
    batch = [
        [
            n.id,
            n.name,
            n.queue,
            n.payload,
            n.priority,
            n.max_retries,
            n.timeout,
            n.key,
            n.created_at,
            n.run_at,
            n.relative,
            n.headers,
        ]
        for n in store
    ]
    params = {"now": None, "rows": json.dumps(batch)}
    try:
        rows = await execute(conn, q.insert, params)
    except psycopg.errors.UniqueViolation as exc:
        # Keys never clash (ON CONFLICT), so this is a job id.
        raise InvalidOptionError(f"cannot enqueue: {exc} (job ids must be unique)") from exc
    except (psycopg.DataError, psycopg.errors.CheckViolation) as exc:
        raise InvalidOptionError(f"cannot enqueue: a field has a bad value: {exc}") from exc
    stored = {row[0]: row for row in rows}  # id -> (id, state, created_at, run_at)
    existing: dict[str, Job] = {}
    taken = [n.key for n in store if n.key is not None and n.id not in stored]
    if taken:
        for row in await execute(conn, q.by_keys, {"keys": taken}):
            existing[row[9]] = row_to_job(row, duplicate=True)
    out: list[Job] = []
    for index, new in enumerate(jobs):
        if new.key is not None and first[new.key] != index:
            out.append(dataclasses.replace(out[first[new.key]], duplicate=True))
        elif new.id in stored:
            _, state, created_at, run_at = stored[new.id]
            out.append(new_job(new, STATES[state], created_at=created_at, run_at=run_at))
        elif new.key in existing:
            out.append(existing[new.key])
        else:  # its key's job was deleted between our insert and our read
            raise InvalidOptionError(
                f"cannot enqueue job {new.id}: its key {new.key!r} was taken and then"
                " released while it was being stored; enqueue it again"
            )
    return out


async def execute(conn: Any, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """One statement on an async or a blocking psycopg connection (a blocking
    one runs on a thread, so the event loop never waits on its socket). Rows
    come as tuples whatever row factory the connection has (a caller's may
    make dicts); its cursor class (client- or server-side binding) and its
    prepared-statement setting are kept, since the caller chose them for its
    server (a pooler in transaction mode needs them off)."""
    if isinstance(conn, psycopg.AsyncConnection):
        async with conn.cursor(row_factory=tuple_row) as acur:
            await acur.execute(query, params)
            return await acur.fetchall() if acur.description is not None else []

    def run() -> list[tuple[Any, ...]]:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    return await asyncio.to_thread(run)
