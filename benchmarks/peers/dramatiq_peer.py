"""Dramatiq with its Redis broker."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peers import probe
from peers.base import Peer, dist_version


def noop(t: float) -> None:
    probe.hit(t)


class DramatiqPeer(Peer):
    name = "dramatiq"
    settings = (
        "`dramatiq.Worker(broker, worker_threads=10)` in one process: what "
        "`dramatiq --processes 1 --threads 10` runs in its worker process; default "
        "middleware (AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, "
        "Retries), prefetch 2 x threads, idle polling backs off up to 1 s (worker_timeout)"
    )
    no_batch_reason = (
        "no batch enqueue: `group(...).run()` calls `send` per message, and the Redis "
        "broker runs one Lua `enqueue` per message"
    )
    notes = (
        "An idle Redis consumer sleeps between empty fetches, backing off from 5 ms up to "
        "worker_timeout = 1 s: this shows in the latency columns."
    )

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
        dramatiq.set_broker(self.broker)
        self.actor: Any = dramatiq.actor(actor_name="noop", broker=self.broker)(noop)

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"dramatiq": dist_version("dramatiq"), "redis-py": dist_version("redis")}

    async def close(self) -> None:
        self.broker.close()

    async def enqueue_one(self, t: float) -> None:
        self.actor.send(t)

    def run_worker(self, started: Callable[[], None]) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        worker = dramatiq.Worker(self.broker, worker_threads=self.concurrency)
        started()
        worker.start()
        stop.wait()
        worker.stop(timeout=5000)
        self.broker.close()


PEER = DramatiqPeer
