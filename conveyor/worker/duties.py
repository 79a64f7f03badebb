"""A worker's periodic duties that need none of its running jobs: recovering
expired leases (of every worker's jobs, not only its own), recording its
presence for `app.workers()` and `conveyor stats`, and firing recurring
schedules."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Backend, Retention
from conveyor.backends.stores import RunningJobInfo, WorkerInfo, WorkerRegistry
from conveyor.events import EventBus
from conveyor.job import Job, JobState
from conveyor.logs import job_fields
from conveyor.outage import Outage
from conveyor.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from conveyor.registry import JobType

logger = logging.getLogger("conveyor.worker")

# Presence: a worker records itself every `presence_interval` seconds (5 s
# by default); a record not renewed for PRESENCE_TTL seconds, or four
# intervals if longer (a killed worker), counts as gone (and shows as stale).
PRESENCE_TTL = 20.0


async def recover_expired_leases(
    outage: Outage,
    backend: Backend,
    max_stalled: int,
    retention: Retention,
    events: EventBus,
    every: float,
    tally: Counter[str],
) -> None:
    """Requeue (or fail, past `max_stalled`) jobs whose lease expired, forever,
    counting them in `tally["lease_recoveries"]`."""
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
        tally["lease_recoveries"] += len(recovered)
        for job in recovered:
            if job.state is JobState.FAILED:
                logger.error(
                    "job %s %s failed: %s",
                    job.name,
                    job.id,
                    job.error,
                    extra=job_fields(job, "failed", error=job.error),
                )
                events.emit("job.failed", job)
            else:
                logger.warning(
                    "job %s %s: its worker's lease expired; queued again",
                    job.name,
                    job.id,
                    extra=job_fields(job, "stalled"),
                )
        await asyncio.sleep(every)


class Presence:
    """This worker's record in the backend: written at start and every
    `presence_interval` seconds, removed at stop (or expiring by itself), with
    the jobs it runs at each beat."""

    def __init__(
        self,
        registry: WorkerRegistry,
        worker_id: str,
        queues: tuple[str, ...],
        names: Callable[[], tuple[str, ...]],
        outage: Outage,
        settings: WorkerSettings,
        running: Callable[[], list[Job]],
    ) -> None:
        self._registry = registry
        self._outage = outage
        self._id = worker_id
        self._queues = queues
        self._names = names
        self._concurrency = settings.concurrency
        self._every = settings.presence_interval
        self._ttl = max(PRESENCE_TTL, 4 * settings.presence_interval)
        self._running = running
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
            concurrency=self._concurrency,
            running=tuple(
                RunningJobInfo(
                    job.id, job.name, job.started_at.timestamp() if job.started_at else now
                )
                for job in self._running()
            ),
        )
        sent_at = self._outage.clock()
        try:
            await self._registry.worker_beat(info, self._ttl)
        except Exception as exc:  # presence is for people looking on: never fatal
            self._outage.failed("recording this worker's presence", exc)
        else:
            self._outage.answered(sent_at)

    async def keep(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.beat()

    async def gone(self) -> None:
        await self._registry.worker_gone(self._id)


def scheduler_loop(
    backend: Backend,
    types: Mapping[str, JobType[Any]],
    events: EventBus,
    settings: WorkerSettings,
    outage: Outage,
    stopping: asyncio.Event,
) -> asyncio.Task[None] | None:
    """The scheduler of a worker that runs one (not in burst mode), started."""
    if not (settings.scheduler and backend.capabilities.recurring) or settings.burst:
        return None
    from conveyor.scheduler import Scheduler

    scheduler = Scheduler(  # declared types' defaults count for schedules too
        backend, types, events, settings.scheduler_interval, outage=outage
    )
    return asyncio.create_task(scheduler.run(stopping), name="conveyor-scheduler")


async def fire_due_schedules(
    backend: Backend, types: Mapping[str, JobType[Any]], events: EventBus, settings: WorkerSettings
) -> None:
    """Burst mode: one scheduler pass before the first claim, so that the
    schedules due now run in this burst (later ticks are the next one's)."""
    if not (settings.scheduler and backend.capabilities.recurring):
        return
    from conveyor.scheduler import Scheduler

    try:
        await Scheduler(backend, types, events).tick()
    except Exception as exc:
        logger.error("scheduler pass failed (%s); schedules left due", exc)
