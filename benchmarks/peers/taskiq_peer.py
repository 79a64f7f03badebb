"""taskiq with taskiq-redis's RedisStreamBroker (the broker its README leads with)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskiq.cli.worker.args import WorkerArgs
from taskiq.cli.worker.run import start_listen
from taskiq_redis import RedisStreamBroker

from peers import probe
from peers.base import Peer, dist_version


async def noop(t: float) -> None:
    probe.hit(t)


class TaskiqPeer(Peer):
    name = "taskiq"
    settings = (
        "`taskiq worker --workers 1 --max-async-tasks 10` (its `start_listen` run in one "
        "process) on `RedisStreamBroker` (Redis streams, acks; xread_count=100, "
        "xread_block=2 s); no result backend; defaults otherwise"
    )
    no_batch_reason = "no batch enqueue (`kiq` per task)"

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.broker = RedisStreamBroker(url=url)
        self.task: Any = self.broker.register_task(noop, task_name="noop")

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {
            "taskiq": dist_version("taskiq"),
            "taskiq-redis": dist_version("taskiq-redis"),
            "redis-py": dist_version("redis"),
        }

    async def open(self) -> None:
        # declares the consumer group (from "$") before anything is sent
        await self.broker.startup()

    async def close(self) -> None:
        await self.broker.shutdown()

    async def enqueue_one(self, t: float) -> None:
        await self.task.kiq(t)

    def run_worker(self, started: Callable[[], None]) -> None:
        args = WorkerArgs(
            broker=self.broker,  # type: ignore[arg-type]  # an instance is accepted too
            modules=[],
            tasks_pattern=(),
            configure_logging=False,
            workers=1,
            max_async_tasks=self.concurrency,
        )
        started()
        start_listen(args)  # returns on SIGTERM/SIGINT


PEER = TaskiqPeer
