"""How a worker keeps its leases: a heartbeat renews, in one call, the leases
of its running jobs, of the prefetched ones waiting for a slot, and of the
finished ones whose outcome the backend has not taken yet; and it learns of
cancels and of leases lost to another claim."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend, Heartbeat, LeaseStatus, Outcome, OutcomeKind
from conveyor.job import Job
from conveyor.outage import Outage
from conveyor.worker.acks import CANCELLED, LOST, Acknowledgements, Running, token_of
from conveyor.worker.clock import ClaimLeases

if TYPE_CHECKING:
    from conveyor.worker.settings import WorkerSettings

logger = logging.getLogger("conveyor.worker")


class LeaseKeeping:
    """The lease-keeping half of `Worker` (which sets these attributes)."""

    backend: Backend
    settings: WorkerSettings
    _running: dict[str, Running]
    _backlog: deque[Job]
    _acks: Acknowledgements
    _claims: ClaimLeases
    _outage: Outage

    # Provided by Worker.
    def _clock(self) -> float:
        raise NotImplementedError

    def _tell_stop(self, running: Running, reason: str) -> None:
        raise NotImplementedError

    def _ack(self, outcome: Outcome, job: Job) -> None:
        raise NotImplementedError

    async def _heartbeat_loop(self) -> None:
        backend = self.backend
        while True:
            await asyncio.sleep(self.settings.heartbeat_every)
            running = list(self._running.values())
            waiting = list(self._backlog)
            unacked = self._acks.heartbeats()
            if not running and not waiting and not unacked:
                continue
            beats = [Heartbeat(r.job.id, token_of(r.job), r.ctx.take_logs()) for r in running]
            beats += [Heartbeat(job.id, token_of(job)) for job in waiting]
            sent_at, beat_sent = self._clock(), self._outage.clock()
            try:
                statuses = await backend.heartbeat(beats + unacked, self.settings.lease)
            except Exception as exc:
                self._outage.failed("heartbeat", exc)
                for r, beat in zip(running, beats, strict=False):
                    r.ctx._logs[:0] = beat.logs  # keep the lines for the next try
                continue
            self._outage.answered(beat_sent)
            self._check_backlog(waiting, statuses[len(running) : len(beats)], sent_at)
            renewed_until = self._claims.holds_until(sent_at)
            for r, status in zip(running, statuses, strict=False):
                if status is LeaseStatus.HELD:
                    r.lease_until = renewed_until
                elif status is LeaseStatus.CANCEL:
                    self._tell_stop(r, CANCELLED)
                elif status is LeaseStatus.LOST and r.job.id in self._running:
                    logger.warning("job %s lost its lease; abandoning this attempt", r.job.id)
                    self._tell_stop(r, LOST)

    def _check_backlog(
        self, waiting: list[Job], statuses: Sequence[LeaseStatus], sent_at: float
    ) -> None:
        for job, status in zip(waiting, statuses, strict=True):
            if job not in self._backlog:
                continue
            if status is LeaseStatus.HELD:
                self._claims.claimed([job], sent_at)  # the lease runs on from this heartbeat
                continue
            self._backlog.remove(job)
            self._claims.forget(job)
            if status is LeaseStatus.CANCEL:
                outcome = Outcome(job.id, token_of(job), OutcomeKind.CANCELLED, time.time())
                outcome.error = "cancelled"
                self._ack(outcome, job)
