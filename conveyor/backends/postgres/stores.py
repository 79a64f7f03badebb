"""Recurring schedules, locks, the cache, worker presence and paused queues
on PostgreSQL.

* Schedules: a table; a tick fires by compare-and-set on `next_run` and
  enqueues its jobs in the same transaction, so a tick is fired with its
  jobs or not at all, whichever scheduler crashes.
* Locks: a table of (key, owner token, expiry by the server's clock), not
  advisory locks. An advisory lock belongs to a database session, so it
  would tie a conveyor lock to one pooled connection, could not carry a TTL
  (a holder that hangs would hold it forever) and could not be extended or
  released by token from another connection. A row does all three, and a
  crashed holder's lock simply expires.
* Cache: an UNLOGGED table (no WAL; emptied if the server crashes).
* Workers: a row per live worker, renewed every few seconds (kept a while
  as stale once it is not).
* Paused queues: a table workers read every second.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from conveyor.backends.base import NewJob
from conveyor.backends.postgres.connection import PostgresConnection
from conveyor.backends.postgres.inserts import insert
from conveyor.backends.postgres.sql import NOW, SCHEDULE_COLS
from conveyor.backends.records import present_workers, stored_worker
from conveyor.backends.stores import STALE_WORKER_KEPT, ScheduleRecord, WorkerInfo
from conveyor.job import Job


class PostgresStores(PostgresConnection):
    """Schedules, locks, cache, worker presence and pauses of `PostgresBackend`."""

    # ------------------------------------------------------------ schedules

    async def schedule_put(
        self, record: ScheduleRecord, expected: ScheduleRecord | None = None
    ) -> bool:
        params = dataclasses.asdict(record)
        if expected is None:
            return bool(await self._write(self.q.schedule_put, params))
        params |= {"expected_next_run": expected.next_run, "expected_enabled": expected.enabled}
        return bool(await self._write(self.q.schedule_replace, params))

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        records = await self._schedules("WHERE name = %(name)s", {"name": name})
        return records[0] if records else None

    async def schedule_list(self) -> list[ScheduleRecord]:
        return await self._schedules("ORDER BY name", {})

    async def schedule_delete(self, name: str) -> bool:
        deleted = await self._write(
            f"DELETE FROM {self.q.s}.schedules WHERE name = %(name)s", {"name": name}
        )
        return deleted > 0

    async def schedule_due(self, now: float | None, limit: int) -> list[ScheduleRecord]:
        return await self._schedules(
            f"WHERE enabled AND next_run <= {NOW} ORDER BY next_run LIMIT %(limit)s",
            {"now": now, "limit": limit},
        )

    async def _schedules(self, clause: str, params: dict[str, object]) -> list[ScheduleRecord]:
        rows = await self._fetch(
            f"SELECT {SCHEDULE_COLS} FROM {self.q.s}.schedules {clause}", params
        )
        return [ScheduleRecord(*row) for row in rows]

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        params = {
            "name": name,
            "expected": expected_next_run,
            "next_run": next_run,
            "last_run": last_run,
            "last_error": last_error,
        }
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(self.q.schedule_fire, params)
            if cur.rowcount != 1:
                return None
            return await insert(self.q, conn, jobs) if jobs else []

    # ------------------------------------------------------------ locks

    async def lock_acquire(
        self, key: str, token: str, ttl: float, now: float | None = None
    ) -> bool:
        params = {"key": key, "token": token, "ttl": ttl, "now": now}
        return await self._write(self.q.lock_acquire, params) == 1

    async def lock_release(self, key: str, token: str) -> bool:
        params = {"key": key, "token": token, "now": None}
        return await self._write(self.q.lock_release, params) == 1

    async def lock_extend(self, key: str, token: str, ttl: float, now: float | None = None) -> bool:
        params = {"key": key, "token": token, "ttl": ttl, "now": now}
        return await self._write(self.q.lock_extend, params) == 1

    # ------------------------------------------------------------ cache

    async def cache_get(self, key: str, now: float | None = None) -> str | None:
        rows = await self._read(self.q.cache_get, {"key": key, "now": now})
        return rows[0][0] if rows else None

    async def cache_set(
        self, key: str, value: str, ttl: float | None, now: float | None = None
    ) -> None:
        await self._write(self.q.cache_set, {"key": key, "value": value, "ttl": ttl, "now": now})

    async def cache_delete(self, key: str) -> bool:
        """True when a live value went (an expired one reads as missing)."""
        rows = await self._fetch(
            f"DELETE FROM {self.q.s}.cache WHERE key = %(key)s"
            f" RETURNING expires IS NULL OR expires > {NOW}",
            {"key": key, "now": None},
        )
        return bool(rows and rows[0][0])

    # ------------------------------------------------------------ workers

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float | None = None) -> None:
        await self._write(
            self.q.worker_beat,
            {
                "id": info.id,
                "host": info.host,
                "pid": info.pid,
                "queues": json.dumps(info.queues),
                "names": json.dumps(info.names),
                "started_at": info.started_at,
                "last_seen": info.last_seen,
                "details": json.dumps(info.details()),
                "ttl": ttl,
                "now": now,
            },
        )

    async def worker_gone(self, worker_id: str) -> None:
        await self._write(f"DELETE FROM {self.q.s}.workers WHERE id = %(id)s", {"id": worker_id})

    async def workers(
        self, now: float | None = None, *, include_stale: bool = False
    ) -> list[WorkerInfo]:
        rows = await self._read(
            f"SELECT {NOW}, id, host, pid, queues, names, started_at, last_seen, details,"
            f" expires FROM {self.q.s}.workers WHERE expires > {NOW} - %(kept)s",
            {"now": now, "kept": STALE_WORKER_KEPT if include_stale else 0.0},
        )
        if not rows:
            return []
        records = [
            (
                stored_worker(
                    id=id,
                    host=host,
                    pid=pid,
                    queues=queues,
                    names=names,
                    started_at=started,
                    last_seen=seen,
                    details=details,
                ),
                expires,
            )
            for _, id, host, pid, queues, names, started, seen, details, expires in rows
        ]
        return present_workers(records, rows[0][0], include_stale)

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, name, count in await self._read(
            f"SELECT queue, name, count(*) FROM {self.q.s}.jobs WHERE state = 'queued'"
            " GROUP BY queue, name",
            bounded=False,  # counts every queued job
        ):
            out.setdefault(queue, {})[name] = count
        return out

    # ------------------------------------------------------------ pauses

    async def pause_queue(self, queue: str) -> bool:
        added = await self._write(
            f"INSERT INTO {self.q.s}.paused_queues (queue, paused_at)"
            f" VALUES (%(queue)s, {NOW}) ON CONFLICT (queue) DO NOTHING",
            {"queue": queue, "now": None},
        )
        return added > 0

    async def resume_queue(self, queue: str) -> bool:
        removed = await self._write(
            f"DELETE FROM {self.q.s}.paused_queues WHERE queue = %(queue)s", {"queue": queue}
        )
        return removed > 0

    async def paused_queues(self) -> set[str]:
        return {
            queue for (queue,) in await self._read(f"SELECT queue FROM {self.q.s}.paused_queues")
        }
