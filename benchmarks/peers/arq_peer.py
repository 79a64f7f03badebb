"""arq: asyncio, Redis only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from arq import Worker, create_pool
from arq.connections import ArqRedis, RedisSettings

from peers import probe
from peers.base import Peer, dist_version


async def noop(ctx: dict[str, Any], t: float) -> None:
    probe.hit(t)


class ArqPeer(Peer):
    name = "arq"
    settings = (
        "`arq.Worker(max_jobs=10)` in one process; defaults otherwise "
        "(poll_delay=0.5 s, keep_result=3600 s)"
    )
    no_batch_reason = "no batch enqueue API (`enqueue_job` per job)"
    notes = (
        "With these defaults a drain tops out near 200 jobs/s: each poll reads at most "
        "queue_read_limit = max(5 x max_jobs, 100) = 100 job ids, and polls are 0.5 s apart. "
        "An idle worker also picks a job up only at its next poll."
    )

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.redis_settings = RedisSettings.from_dsn(url)
        self.pool: ArqRedis | None = None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"arq": dist_version("arq"), "redis-py": dist_version("redis")}

    async def open(self) -> None:
        self.pool = await create_pool(self.redis_settings)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None

    async def enqueue_one(self, t: float) -> None:
        assert self.pool is not None
        await self.pool.enqueue_job("noop", t)

    def run_worker(self, started: Callable[[], None]) -> None:
        worker = Worker(
            functions=[noop],
            redis_settings=self.redis_settings,
            max_jobs=self.concurrency,
            handle_signals=True,
        )
        started()
        worker.run()  # returns on SIGTERM/SIGINT


PEER = ArqPeer
