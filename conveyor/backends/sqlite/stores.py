"""Recurring schedules, locks, the cache, worker presence and paused queues
on SQLite: small tables of the same file, a class the backend inherits."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from conveyor.backends.base import NewJob
from conveyor.backends.sqlite import queries
from conveyor.backends.sqlite.connection import SQLiteConnection
from conveyor.backends.sqlite.sql import CACHE_SET, LOCK_ACQUIRE, SCHEDULE_COLS, SCHEDULE_FIRE
from conveyor.backends.sqlite.writer import write_transaction
from conveyor.backends.stores import ScheduleRecord, WorkerInfo
from conveyor.job import Job


class SQLiteStores(SQLiteConnection):
    """Schedules, locks, cache, worker presence and pauses of `SQLiteBackend`."""

    # ------------------------------------------------------------ schedules

    async def schedule_put(
        self, record: ScheduleRecord, expected: ScheduleRecord | None = None
    ) -> bool:
        written: bool = await self._call(queries.schedule_put, record, expected)
        return written

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        records = await self._call(
            queries.schedules,
            f"SELECT {SCHEDULE_COLS} FROM conveyor_schedules WHERE name = ?1",
            name,
        )
        return records[0] if records else None

    async def schedule_list(self) -> list[ScheduleRecord]:
        return await self._call(
            queries.schedules, f"SELECT {SCHEDULE_COLS} FROM conveyor_schedules ORDER BY name"
        )

    async def schedule_delete(self, name: str) -> bool:
        return await self._call(
            queries.write_one, "DELETE FROM conveyor_schedules WHERE name = ?1", name
        )

    async def schedule_due(self, now: float | None, limit: int) -> list[ScheduleRecord]:
        return await self._call(
            queries.schedules,
            f"SELECT {SCHEDULE_COLS} FROM conveyor_schedules WHERE enabled AND next_run <= ?1"
            " ORDER BY next_run LIMIT ?2",
            time.time() if now is None else now,
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
        with write_transaction(conn):
            params = (next_run, last_run, last_error, name, expected_next_run)
            if conn.execute(SCHEDULE_FIRE, params).rowcount != 1:
                return None
            out, inserted = queries.insert(conn, jobs, time.time())
        if inserted:
            self._wakeups += 1
        return out

    # ------------------------------------------------------------ locks

    async def lock_acquire(
        self, key: str, token: str, ttl: float, now: float | None = None
    ) -> bool:
        now = time.time() if now is None else now
        return await self._call(queries.write_one, LOCK_ACQUIRE, key, token, now, ttl)

    async def lock_release(self, key: str, token: str) -> bool:
        return await self._call(
            queries.write_one,
            "DELETE FROM conveyor_locks WHERE key = ?1 AND token = ?2 AND expires > ?3",
            key,
            token,
            time.time(),
        )

    async def lock_extend(self, key: str, token: str, ttl: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return await self._lease_call(
            queries.write_one,
            "UPDATE conveyor_locks SET expires = ?1 + ?2"
            " WHERE key = ?3 AND token = ?4 AND expires > ?1",
            now,
            ttl,
            key,
            token,
        )

    # ------------------------------------------------------------ cache

    async def cache_get(self, key: str, now: float | None = None) -> str | None:
        return await self._call(queries.cache_get, key, time.time() if now is None else now)

    async def cache_set(
        self, key: str, value: str, ttl: float | None, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        await self._call(
            queries.write_one, CACHE_SET, key, value, None if ttl is None else now + ttl
        )

    async def cache_delete(self, key: str) -> bool:
        """True when a live value went (an expired one reads as missing)."""
        return await self._call(queries.cache_delete, key, time.time())

    # ------------------------------------------------------------ workers

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        await self._call(queries.worker_beat, info, now + ttl, now)

    async def worker_gone(self, worker_id: str) -> None:
        await self._call(queries.write_one, "DELETE FROM conveyor_workers WHERE id = ?1", worker_id)

    async def workers(
        self, now: float | None = None, *, include_stale: bool = False
    ) -> list[WorkerInfo]:
        now = time.time() if now is None else now
        return await self._call(queries.workers, now, include_stale)

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        return await self._call(queries.queued_by_name)

    # ------------------------------------------------------------ pauses

    async def pause_queue(self, queue: str) -> bool:
        return await self._call(
            queries.write_one,
            "INSERT OR IGNORE INTO conveyor_paused (queue, paused_at) VALUES (?1, ?2)",
            queue,
            time.time(),
        )

    async def resume_queue(self, queue: str) -> bool:
        return await self._call(
            queries.write_one, "DELETE FROM conveyor_paused WHERE queue = ?1", queue
        )

    async def paused_queues(self) -> set[str]:
        return await self._call(queries.paused_queues)
