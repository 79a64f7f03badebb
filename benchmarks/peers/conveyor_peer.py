"""conveyor itself, on the backend its URL selects (redis:// by default)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

from conveyor import Conveyor
from conveyor import __version__ as conveyor_version
from conveyor.backends import SCHEMES, scheme_of
from peers import probe
from peers.base import Peer, dist_version

NOOP = "bench.noop"


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
        scheme = scheme_of(url)
        module = f"conveyor.backends.{scheme}"
        if scheme not in SCHEMES or importlib.util.find_spec(module) is None:
            return "n/a (backend missing)"
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        # conveyor speaks RESP itself; hiredis parses the replies.
        found = {"conveyor": conveyor_version}
        if dist_version("hiredis") != "not installed":
            found["hiredis"] = dist_version("hiredis")
        return found

    async def open(self) -> None:
        self.app = make_app(self.url)
        await self.app.open()

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close()
            self.app = None

    async def reset(self) -> None:
        if scheme_of(self.url) != "redis":  # a Redis DB is flushed by the harness
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
