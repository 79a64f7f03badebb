"""PgQueuer: PostgreSQL only, on asyncpg (the driver its `pgq` CLI tries first)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import uvloop
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries, run
from pgqueuer.domain.settings import db_settings

from peers import probe
from peers.base import Peer, dist_version
from peers.stores import split_postgres


async def noop(job: Job) -> None:
    probe.hit(float(job.payload or b"0"))


def use_schema(url: str) -> str:
    """Point PgQueuer at the peer's schema (its documented PGQUEUER_SCHEMA
    setting, read once per process); return the DSN to connect to."""
    dsn, schema = split_postgres(url)
    os.environ["PGQUEUER_SCHEMA"] = schema
    db_settings.cache_clear()
    return dsn


class PgqueuerPeer(Peer):
    name = "pgqueuer"
    settings = (
        "`pgqueuer.run(factory, batch_size=5, max_concurrent_tasks=10)` on uvloop in one "
        "process, what `pgq run --batch-size 5 --max-concurrent-tasks 10` runs; "
        "defaults otherwise (LISTEN/NOTIFY, on_failure='delete')"
    )
    batch_call = "`Queries.enqueue([names], [payloads], [priorities])` (one INSERT per batch)"
    notes = (
        "max_concurrent_tasks must be at least twice batch_size, hence batch_size 5 at "
        "concurrency 10 (the default batch_size is 10, with no concurrency cap). "
        "A finished job leaves the queue table for its log table."
    )

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.dsn = use_schema(url)
        self.connection: asyncpg.Connection | None = None
        self.queries: Queries | None = None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"pgqueuer": dist_version("pgqueuer"), "asyncpg": dist_version("asyncpg")}

    async def open(self) -> None:
        self.connection = await asyncpg.connect(self.dsn)
        self.queries = Queries(AsyncpgDriver(self.connection))
        await self.queries.install()  # into the emptied schema

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
            self.queries = None

    async def enqueue_one(self, t: float) -> None:
        assert self.queries is not None
        await self.queries.enqueue("noop", repr(t).encode())

    async def enqueue_batch(self, ts: list[float]) -> None:
        assert self.queries is not None
        count = len(ts)
        await self.queries.enqueue(["noop"] * count, [repr(t).encode() for t in ts], [0] * count)

    def run_worker(self, started: Callable[[], None]) -> None:
        @asynccontextmanager
        async def factory() -> AsyncIterator[PgQueuer]:
            connection = await asyncpg.connect(self.dsn)
            try:
                pgq = PgQueuer(AsyncpgDriver(connection))
                pgq.entrypoint("noop")(noop)
                started()
                yield pgq
            finally:
                await connection.close()

        # The largest batch PgQueuer allows under this cap (at least twice the batch).
        batch_size = max(1, self.concurrency // 2)
        cap = max(self.concurrency, 2 * batch_size)
        # pgqueuer.run handles SIGTERM/SIGINT itself, as `pgq run` does.
        uvloop.run(run(factory, batch_size=batch_size, max_concurrent_tasks=cap))


PEER = PgqueuerPeer
