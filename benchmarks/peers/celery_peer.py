"""Celery with the Redis broker (no result backend: the task result is ignored)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, group  # type: ignore[import-untyped]

from peers import probe
from peers.base import Peer, dist_version


def noop(t: float) -> None:
    probe.hit(t)


class CeleryPeer(Peer):
    name = "celery"
    settings = (
        "`celery worker --pool=threads --concurrency=10 --without-mingle --without-gossip "
        "--without-heartbeat` in one process (the threads pool: the default prefork pool "
        "would be 10 child processes); prefetch multiplier 4 (default), no result backend"
    )
    batch_call = (
        "`group(noop.s(...) for ...).apply_async()` (publishes one message per task over "
        "one producer; Celery has no pipelined batch publish, and `chunks` changes the unit "
        "of work so it is not used)"
    )

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.app = Celery("bench", broker=url)
        self.app.conf.update(
            broker_connection_retry_on_startup=True,
            task_ignore_result=True,
            worker_hijack_root_logger=False,
        )
        self.task: Any = self.app.task(name="bench.noop", ignore_result=True)(noop)

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {
            "celery": dist_version("celery"),
            "kombu": dist_version("kombu"),
            "redis-py": dist_version("redis"),
        }

    async def close(self) -> None:
        self.app.close()

    async def enqueue_one(self, t: float) -> None:
        self.task.delay(t)

    async def enqueue_batch(self, ts: list[float]) -> None:
        group(self.task.s(t) for t in ts).apply_async()

    def run_worker(self, started: Callable[[], None]) -> None:
        started()
        self.app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={self.concurrency}",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "--loglevel=WARNING",
            ]
        )


PEER = CeleryPeer
