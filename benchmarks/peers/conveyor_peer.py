"""conveyor itself, on the backend its URL selects: the suite's server
(redis://, bullmq://...?queue=bench&prefix=bull, postgresql://...?schema=NAME,
or sqs://...?endpoint_url=<moto>), or --conveyor-url."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

from conveyor import Conveyor
from conveyor import __version__ as conveyor_version
from conveyor.backends import from_url
from peers import probe
from peers.base import Peer, dist_version
from peers.stores import bullmq_url, is_postgres, is_sqs, sqs_options

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
    def for_url(cls, url: str) -> type[Peer]:
        if cls is ConveyorPeer and is_sqs(url) and "store" not in sqs_options(url):
            return ConveyorBareSQSPeer
        return cls

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
        found = cls.versions()
        found.update(driver_versions(url))
        return found

    async def open(self) -> None:
        self.app = make_app(self.url)
        await self.app.open()

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close()
            self.app = None

    async def reset(self) -> None:
        # The harness empties the suite's store; --conveyor-url's is purged here,
        # where the backend can (SQS without a store cannot: the harness
        # purges the SQS queues on the suite's moto server anyway).
        app = self.app
        if app is not None and not self.in_flushed_store() and app.backend.capabilities.purge:
            states = ["queued", "scheduled", "completed", "failed", "cancelled"]
            await app.purge(states)

    def in_flushed_store(self) -> bool:
        """Whether the harness's flush empties what `url` stores: the suite's
        own store, or (bullmq suite) BullMQ's layout in that Redis DB."""
        store = self.store_url
        return store is not None and self.url in (store, bullmq_url(store))

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


class ConveyorBareSQSPeer(ConveyorPeer):
    """The SQS suite's `conveyor` row: no store, the message is the job."""

    notes = (
        "No store: the message carries the whole job, and nothing is kept once it completes. "
        "Each enqueue call is SendMessageBatch calls of up to 10, in parallel."
    )


def driver_versions(url: str) -> dict[str, str]:
    """The client libraries conveyor uses for `url`: it speaks RESP itself
    (hiredis parses the replies; on bullmq:// it runs the Lua scripts of the
    PyPI bullmq package), psycopg for PostgreSQL, aiobotocore for SQS (and
    then its store's)."""
    scheme = urlsplit(url).scheme
    if is_postgres(url):
        names = ["psycopg"]
    elif scheme in REDIS_SCHEMES:
        names = ["hiredis"]
    elif scheme == "bullmq":
        names = ["hiredis", "bullmq"]
    elif is_sqs(url):
        names = ["aiobotocore"]
    else:
        names = []
    found = {n: dist_version(n) for n in names if dist_version(n) != "not installed"}
    store = sqs_options(url).get("store") if is_sqs(url) else None
    if store:
        found.update(driver_versions(store))
    return found


PEER = ConveyorPeer
