"""A worker's periodic duties that need none of its running jobs: recovering
expired leases (of every worker's jobs, not only its own) and recording its
presence for `app.workers()` and `conveyor stats`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from conveyor.backends.base import Backend, Retention, WorkerInfo, WorkerRegistry
from conveyor.events import EventBus
from conveyor.job import JobState
from conveyor.outage import Outage

logger = logging.getLogger("conveyor.worker")

# Presence: a worker records itself this often; a record not renewed for
# PRESENCE_TTL seconds (a killed worker) counts as gone.
PRESENCE_EVERY = 5.0
PRESENCE_TTL = 20.0


async def recover_expired_leases(
    outage: Outage,
    backend: Backend,
    max_stalled: int,
    retention: Retention,
    events: EventBus,
    every: float,
) -> None:
    """Requeue (or fail, past `max_stalled`) jobs whose lease expired, forever."""
    while True:
        sent_at = outage.clock()
        try:
            # None: expired by the backend's clock, not this worker's.
            recovered = await backend.recover_expired(None, max_stalled, retention)
        except Exception as exc:
            outage.failed("lease recovery", exc)
            recovered = []
        else:
            outage.answered(sent_at)
        for job in recovered:
            if job.state is JobState.FAILED:
                logger.error("job %s %s failed: %s", job.name, job.id, job.error)
                events.emit("job.failed", job)
            else:
                logger.warning(
                    "job %s %s: its worker's lease expired; queued again", job.name, job.id
                )
        await asyncio.sleep(every)


class Presence:
    """This worker's record in the backend: written at start and every
    PRESENCE_EVERY seconds, removed at stop (or expiring by itself)."""

    def __init__(
        self,
        registry: WorkerRegistry,
        worker_id: str,
        queues: tuple[str, ...],
        names: Callable[[], tuple[str, ...]],
        outage: Outage,
    ) -> None:
        self._registry = registry
        self._outage = outage
        self._id = worker_id
        self._queues = queues
        self._names = names
        self._started_at = time.time()

    async def beat(self) -> None:
        now = time.time()
        info = WorkerInfo(
            id=self._id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self._queues,
            names=tuple(sorted(self._names())),
            started_at=self._started_at,
            last_seen=now,
        )
        sent_at = self._outage.clock()
        try:
            await self._registry.worker_beat(info, PRESENCE_TTL)
        except Exception as exc:  # presence is for people looking on: never fatal
            self._outage.failed("recording this worker's presence", exc)
        else:
            self._outage.answered(sent_at)

    async def keep(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_EVERY)
            await self.beat()

    async def gone(self) -> None:
        await self._registry.worker_gone(self._id)
