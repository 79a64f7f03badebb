"""SAQ (simple async queue) on its Redis queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from saq import Queue, Worker

from peers import probe
from peers.base import Peer, dist_version


async def noop(ctx: Any, *, t: float) -> None:
    probe.hit(t)


class SaqPeer(Peer):
    name = "saq"
    settings = "`saq.Worker(queue, functions=[noop], concurrency=10)` in one process; defaults"
    no_batch_reason = (
        "no one-round-trip enqueue: `Queue.batch()` is an abort-on-error scope and "
        "`Queue.map` waits for results"
    )

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.queue: Queue | None = None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"saq": dist_version("saq"), "redis-py": dist_version("redis")}

    async def open(self) -> None:
        self.queue = Queue.from_url(self.url)
        await self.queue.connect()

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.disconnect()
            self.queue = None

    async def enqueue_one(self, t: float) -> None:
        assert self.queue is not None
        await self.queue.enqueue("noop", t=t)

    def run_worker(self, started: Callable[[], None]) -> None:
        async def main() -> None:
            queue = Queue.from_url(self.url)
            await queue.connect()
            worker = Worker(queue, functions=[noop], concurrency=self.concurrency)
            started()
            try:
                await worker.start()  # installs its own SIGTERM/SIGINT handlers
            finally:
                await queue.disconnect()

        asyncio.run(main())


PEER = SaqPeer
