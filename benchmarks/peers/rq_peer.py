"""RQ (Redis Queue): synchronous, one job at a time per worker process."""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis import Redis
from rq import Queue, SimpleWorker

from peers import probe
from peers.base import Peer, dist_version


def noop(t: float) -> None:
    probe.hit(t)


class RqPeer(Peer):
    name = "rq"
    settings = (
        "`rq.SimpleWorker` in one process: **one job at a time** (RQ has no concurrency "
        "inside a worker process; the default `Worker` also forks a child per job); defaults "
        "otherwise (result_ttl=500 s)"
    )
    batch_call = "`Queue.enqueue_many([Queue.prepare_data(...)])` (one pipeline per batch)"
    notes = (
        "Concurrency 10 in RQ means 10 worker processes (`rq worker-pool -n 10`), which is not "
        "the one-process setup measured here."
    )

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.redis: Redis | None = None
        self.queue: Queue | None = None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"rq": dist_version("rq"), "redis-py": dist_version("redis")}

    async def open(self) -> None:
        self.redis = Redis.from_url(self.url)
        self.queue = Queue("default", connection=self.redis)

    async def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
            self.redis = self.queue = None

    async def enqueue_one(self, t: float) -> None:
        assert self.queue is not None
        self.queue.enqueue(noop, t)

    async def enqueue_batch(self, ts: list[float]) -> None:
        assert self.queue is not None
        self.queue.enqueue_many([Queue.prepare_data(noop, (t,)) for t in ts])

    def run_worker(self, started: Callable[[], None]) -> None:
        redis = Redis.from_url(self.url)
        worker = SimpleWorker([Queue("default", connection=redis)], connection=redis)
        logging.getLogger("rq.worker").setLevel(logging.WARNING)
        started()
        worker.work(burst=False, logging_level="WARNING", with_scheduler=False)


PEER = RqPeer
