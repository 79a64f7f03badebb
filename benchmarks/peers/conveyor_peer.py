"""conveyor itself, on the backend its URL selects: the suite's server
(redis://, or postgresql://...?schema=NAME), or --conveyor-url."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

from conveyor import Conveyor
from conveyor import __version__ as conveyor_version
from conveyor.backends import from_url
from peers import probe
from peers.base import Peer, dist_version
from peers.stores import is_postgres

NOOP = "bench.noop"
REDIS_SCHEMES = ("redis", "rediss", "unix")


async def noop(payload: float) -> None:
    probe.hit(payload)


def make_app(url: str) -> Conveyor:
    app = Conveyor(url)
    app.job(NOOP)(noop)  # default options: retries=3, timeout=30 s
    return app


class ConveyorPeer(Peer):
    name = "conveyor"
    settings = (
        "`app.worker(concurrency=10, scheduler=False).run()` in one process; job defaults "
        "(retries=3, timeout=30 s), keep_completed=1000 (default)"
    )
    batch_call = "`app.enqueue_many([...])` (one round trip per batch where the backend allows)"
    #: extra worker settings, as multiples of the concurrency
    prefetch_factor = 0

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.app: Conveyor | None = None

    @classmethod
    def missing(cls, url: str) -> str | None:
        # Building the backend (not opening it) is what fails on a checkout that
        # lacks the scheme or its driver: report that error, and the run goes on.
        try:
            from_url(url)
        except Exception as exc:
            return f"failed: {type(exc).__name__}: {exc}"
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"conveyor": conveyor_version}

    @classmethod
    def versions_for(cls, url: str) -> dict[str, str]:
        # conveyor speaks RESP itself (hiredis parses the replies); psycopg for PostgreSQL.
        scheme = urlsplit(url).scheme
        driver = "psycopg" if is_postgres(url) else "hiredis" if scheme in REDIS_SCHEMES else None
        found = cls.versions()
        if driver is not None and dist_version(driver) != "not installed":
            found[driver] = dist_version(driver)
        return found

    async def open(self) -> None:
        self.app = make_app(self.url)
        await self.app.open()

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close()
            self.app = None

    async def reset(self) -> None:
        if self.url != self.store_url:  # else the harness empties it
            assert self.app is not None
            states = ["queued", "scheduled", "completed", "failed", "cancelled"]
            await self.app.purge(states)

    async def enqueue_one(self, t: float) -> None:
        assert self.app is not None
        await self.app.enqueue(NOOP, t)

    async def enqueue_batch(self, ts: list[float]) -> None:
        assert self.app is not None
        await self.app.enqueue_many([(NOOP, t) for t in ts])

    def run_worker(self, started: Callable[[], None]) -> None:
        async def main() -> None:
            app = make_app(self.url)
            await app.open()
            worker = app.worker(
                concurrency=self.concurrency,
                prefetch=self.prefetch_factor * self.concurrency,
                scheduler=False,
            )
            started()
            try:
                await worker.run()  # until SIGTERM/SIGINT
            finally:
                await app.close()

        asyncio.run(main())


PEER = ConveyorPeer
