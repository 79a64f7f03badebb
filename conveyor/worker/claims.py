"""The worker's calls that lease jobs: plain claims, claims that carry the
acknowledgements waiting to be sent, blocking claims, and undoing the claims
whose reply was lost.

Each claim call gets an id of its own, which the backend makes (or derives)
the fencing token of the jobs it leases. A call that raised may still have
leased jobs on the backend (the reply was lost, not the request): its id is
kept and `unclaim`ed before the next claim, so those jobs go back to the
queue at once, attempt uncounted, instead of waiting out their lease and
being charged a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from conveyor.backends.base import Backend, Retention
from conveyor.backends.optional import BlockingClaim, FinishAndClaim
from conveyor.job import Job
from conveyor.worker.acks import Acknowledgements, Batch
from conveyor.worker.clock import ClaimLeases
from conveyor.worker.settings import WorkerSettings

logger = logging.getLogger("conveyor.worker")

# With claim retries at most a second apart, this many lost claims cover a
# default lease (30 s); older ones' leases have expired and recovery takes
# their jobs back.
_MAX_LOST_CLAIMS = 32


class Claimer:
    def __init__(
        self,
        backend: Backend,
        worker_id: str,
        queues: Callable[[], tuple[str, ...]],
        names: Callable[[], tuple[str, ...]],
        settings: WorkerSettings,
        retention: Retention,
        acks: Acknowledgements,
        leases: ClaimLeases,
        clock: Callable[[], float],
    ) -> None:
        self._backend = backend
        self._worker_id = worker_id
        self._queues = queues  # the worker's queues less the paused ones, read per call
        self._woken = asyncio.Event()
        self._names = names
        self._settings = settings
        self._retention = retention
        self._acks = acks
        self._leases = leases
        self._clock = clock
        self._combined: FinishAndClaim | None = (
            backend if isinstance(backend, FinishAndClaim) else None
        )
        self.blocking: BlockingClaim | None = (
            backend if isinstance(backend, BlockingClaim) else None
        )
        self.blocked_in: BlockingClaim | None = None  # set while in claim_blocking
        self._made = 0
        self._lost: deque[str] = deque(maxlen=_MAX_LOST_CLAIMS)
        self._unclaiming = asyncio.Lock()

    async def exchange(self, batch: Batch, limit: int) -> list[Job]:
        """Send `batch` and claim up to `limit` jobs (one round trip where the
        backend can). Once acknowledged, the batch is emptied: a failure after
        that must not send it again."""
        if self._lost:
            await self.unclaim_lost()
        claim_id = self._new_id()
        try:
            return await self._exchange(batch, limit, claim_id)
        except BaseException:
            if limit > 0:
                self._lost.append(claim_id)  # undone before the next claim
            raise

    async def _exchange(self, batch: Batch, limit: int, claim_id: str) -> list[Job]:
        backend, queues, lease = self._backend, self._queues(), self._settings.lease
        names = self._names()
        if not queues:
            limit = 0  # every queue of this worker is paused
        # Leases are reckoned by the backend's clock (the server's, where
        # there is one): no time of this worker's is sent.
        sent_at = self._clock()
        if not batch.outcomes:
            jobs = []
            if limit > 0:
                jobs = await backend.claim(queues, limit, lease, claim_id=claim_id, names=names)
        elif self._combined is not None and limit > 0:
            accepted, jobs = await self._combined.finish_and_claim(
                batch.outcomes,
                self._retention,
                queues,
                limit,
                lease,
                claim_id=claim_id,
                names=names,
            )
            self._acks.acknowledged(batch, accepted)
        else:
            accepted = await backend.finish(batch.outcomes, self._retention)
            self._acks.acknowledged(batch, accepted)
            jobs = []
            if limit > 0:
                sent_at = self._clock()
                jobs = await backend.claim(queues, limit, lease, claim_id=claim_id, names=names)
        self._leases.claimed(jobs, sent_at)
        return jobs

    async def claim_blocking(self, backend: BlockingClaim, limit: int) -> list[Job]:
        """Wait on the server for work and claim it in the same step."""
        settings = self._settings
        queues = self._queues()
        if not queues:  # every queue of this worker is paused: see wait_for_work
            return []
        self._woken.clear()
        self.blocked_in = backend
        sent_at = self._clock()
        claim_id = self._new_id()
        try:
            # stop() ends this wait through wake_waiter() rather than abandon
            # it, so whatever the claim took is handed back now, not after its
            # lease expires. The wait lasts at most half a lease: the claim at
            # its end then still has half its lease by the worker's reckoning,
            # which counts from when the wait began.
            jobs = await backend.claim_blocking(
                queues,
                limit,
                settings.lease,
                min(settings.poll_interval, settings.lease / 2),
                self._worker_id,
                claim_id=claim_id,
                names=self._names(),
            )
        except BaseException:
            self._lost.append(claim_id)  # undone before the next claim
            raise
        finally:
            self.blocked_in = None
        self._leases.claimed(jobs, sent_at)
        return jobs

    async def wait_for_work(self, stopping: asyncio.Event) -> None:
        """Return when work may be there, after the poll interval, on stop, or
        when the paused queues changed (`wake`)."""
        queues = self._queues()
        if not queues:  # every queue of this worker is paused
            await self._wait_for_wake(self._settings.poll_interval, stopping)
            return
        self._woken.clear()
        waiter = asyncio.ensure_future(
            self._backend.wait_for_work(queues, self._settings.poll_interval, names=self._names())
        )
        stopper = asyncio.ensure_future(stopping.wait())
        woken = asyncio.ensure_future(self._woken.wait())
        try:
            await asyncio.wait({waiter, stopper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (waiter, stopper, woken):
                if not fut.done():
                    fut.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiter
        # The wait's own failure is the caller's to judge (an outage, or a
        # backend that cannot serve this worker at all).
        failure = None if waiter.cancelled() else waiter.exception()
        if failure is not None:
            raise failure

    async def wake(self) -> None:
        """End an idle wait early: the paused queues changed, so the queues
        to claim from did. A blocking claim's server-side wait is ended too
        (its claim then runs at once, with the queues it was given)."""
        self._woken.set()
        blocked = self.blocked_in
        if blocked is not None:
            try:
                await blocked.wake_waiter(self._worker_id)
            except Exception as exc:  # the wait ends by itself within the poll interval
                logger.debug("could not end the blocking wait early: %s", exc)

    async def _wait_for_wake(self, timeout: float, stopping: asyncio.Event) -> None:
        """With nothing to claim from: wait for `wake`, `stopping` or `timeout`."""
        self._woken.clear()
        waits = [asyncio.ensure_future(self._woken.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits:
                fut.cancel()

    def _new_id(self) -> str:
        self._made += 1
        return f"{self._worker_id}/{self._made}"

    async def unclaim_lost(self) -> None:
        """Undo the claims whose reply never came: their jobs, which this
        worker never saw, go back to the queue with their attempt uncounted.
        One at a time: both claim lanes call this before each exchange."""
        async with self._unclaiming:
            await self._unclaim_lost()

    async def _unclaim_lost(self) -> None:
        while self._lost:
            claim_id = self._lost[0]
            handed_back = await self._backend.unclaim(claim_id)
            self._lost.popleft()
            if handed_back:
                logger.warning(
                    "claim %s: its reply was lost; %d job(s) handed back", claim_id, handed_back
                )

    async def unclaim_lost_before_exit(self, timeout: float) -> None:
        if not self._lost:
            return
        try:
            async with asyncio.timeout(timeout):
                await self.unclaim_lost()
        except (Exception, asyncio.CancelledError) as exc:
            logger.warning(
                "could not undo %d lost claim(s) (%s); their jobs come back when the lease expires",
                len(self._lost),
                exc or type(exc).__name__,
            )
