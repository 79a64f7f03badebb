"""Keeping the PostgreSQL backend's tables small: retention in batches, and
a VACUUM of its own when dead rows pile up.

Every job leaves dead row versions behind: its claim and its finish are
UPDATEs, its deletion by retention a DELETE. Until a VACUUM removes them,
they stay in the heap and in the indexes, and the claim index keeps the
entries of claimed jobs at its front, where every claim starts walking. On
a server whose autovacuum is off or lags behind, claims slow down as they
pile up. So the backend looks at `pg_stat_user_tables` of its schema every
few seconds (from the worker's lease-recovery tick) and VACUUMs (with
ANALYZE, which also gives the planner its statistics) each table whose dead
rows pass a threshold: one process at a time (an advisory lock), on a
connection of its own, in the background. `?vacuum=false` turns it off
for a DBA who tunes autovacuum instead (see the README for settings).

Retention: trimming a queue's finished jobs to `keep_completed` reads past
the `keep` newest, so doing it after every acknowledgement would cost more
than the jobs. A process trims a (queue, state) after its first finish
there and then after every `keep // 10` finishes (every one for keep < 20),
deleting at most TRIM_BATCH rows per statement. A queue so holds at most
`keep` plus `keep // 10` per worker process of its finished jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg import sql

from conveyor.backends.base import Retention

if TYPE_CHECKING:
    from conveyor.backends.postgres.connection import PostgresConnection

logger = logging.getLogger("conveyor.postgres")

TRIM_BATCH: Final = 10_000
CHECK_EVERY: Final = 2.0  # seconds between looks at the dead-row counts
# A table is vacuumed once it holds this many dead rows, or (small tables)
# a fifth of its live rows, whichever is less, but never fewer than the floor.
DEAD_ROWS: Final = 10_000
DEAD_ROWS_FLOOR: Final = 1_000


class Maintenance:
    def __init__(self, backend: PostgresConnection) -> None:
        self._backend = backend
        self._since_trim: dict[tuple[str, str], int] = {}
        self._checked = 0.0
        self._vacuum: asyncio.Task[None] | None = None

    async def after_finish(self, ended: list[tuple[str, str]], retention: Retention) -> None:
        """Trim where `ended` ((queue, new state) per job) makes it due."""
        due: set[tuple[str, str, int]] = set()
        for queue, state in ended:
            keep = {"completed": retention.keep_completed, "failed": retention.keep_failed}.get(
                state
            )
            if keep is None:
                continue
            every = max(1, keep // 10)
            count = self._since_trim.get((state, queue), every - 1) + 1
            if count >= every:
                due.add((queue, state, keep))
                count = 0
            self._since_trim[(state, queue)] = count
        for queue, state, keep in sorted(due):
            await self._backend._write(
                self._backend.q.trim,
                {"queue": queue, "state": state, "keep": keep, "batch": TRIM_BATCH},
            )

    async def tick(self) -> None:
        """Look at the dead rows (every CHECK_EVERY s at most) and start a
        VACUUM of the tables that need one, unless one is running."""
        if not self._backend.settings.vacuum:
            return
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY or (self._vacuum and not self._vacuum.done()):
            return
        self._checked = now
        rows = await self._backend._fetch(
            "SELECT relname, n_dead_tup, n_live_tup FROM pg_stat_user_tables"
            " WHERE schemaname = %(schema)s",
            {"schema": self._backend.schema},
        )
        tables = [
            name
            for name, dead, live in rows
            if dead >= max(DEAD_ROWS_FLOOR, min(DEAD_ROWS, live // 5))
        ]
        if tables:
            self._vacuum = asyncio.create_task(self._run(sorted(tables)))

    async def _run(self, tables: list[str]) -> None:
        backend = self._backend
        lock = f"conveyor.vacuum.{backend.schema}"
        try:
            conn = await psycopg.AsyncConnection.connect(backend.settings.conninfo, autocommit=True)
        except psycopg.Error as exc:
            logger.debug("no connection for VACUUM: %s", exc)
            return
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (lock,))
            row = await cur.fetchone()
            if not row or not row[0]:
                return  # another process is vacuuming this schema
            for table in tables:
                started = time.monotonic()
                await conn.execute(
                    sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(backend.schema, table))
                )
                logger.debug(
                    "VACUUM %s.%s took %.2f s", backend.schema, table, time.monotonic() - started
                )
        except psycopg.Error as exc:
            logger.warning("VACUUM of schema %r failed: %s", backend.schema, exc)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()  # the session's advisory lock goes with it

    async def stop(self) -> None:
        if self._vacuum is not None and not self._vacuum.done():
            self._vacuum.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._vacuum
        self._vacuum = None
