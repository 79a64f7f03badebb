"""The worker's reckoning of time, by its event loop's monotonic clock.

* `ClaimLeases`: until when the lease of each claimed job that has not
  started yet surely holds. A claim reply read after the lease ran out (the
  process was frozen, SIGSTOP or a debugger; the reply or the heartbeats came
  too late) must not start its jobs: another worker may hold them by then.
* `Deadlines`: the waits of a stopping worker, each ending at a deadline, or
  at once after a second signal, so that stop() is bounded whatever the
  backend does.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from conveyor.job import Job

logger = logging.getLogger("conveyor.worker")

# How long a task cancelled by stop() gets to wind down before stop() moves on.
CANCEL_WAIT = 0.5


class ClaimLeases:
    def __init__(self, lease: float, heartbeat_every: float) -> None:
        self._lease = lease
        # A job started at the last moment still needs the heartbeat that
        # renews its lease to come in time.
        self._margin = min(heartbeat_every, lease / 4)
        self._until: dict[str, float] = {}
        self.stale_claims = 0  # claims not started because their lease ran out

    def claimed(self, jobs: Iterable[Job], sent_at: float) -> None:
        """The backend leased `jobs` (or renewed their lease) no earlier than
        `sent_at`, the loop time the call was sent."""
        until = self.holds_until(sent_at)
        for job in jobs:
            self._until[job.id] = until

    def holds_until(self, sent_at: float) -> float:
        """Until when a lease granted or renewed by a call sent at `sent_at`
        surely holds, leaving time for the next heartbeat to renew it."""
        return sent_at + self._lease - self._margin

    def until(self, job: Job) -> float:
        """Until when the claim of `job`, not started yet, surely holds."""
        return self._until.get(job.id, math.inf)

    def forget(self, job: Job) -> None:
        """The job started, or left the worker: its claim is no concern any more."""
        self._until.pop(job.id, None)

    def stale(self, job: Job, now: float) -> bool:
        """Whether the job's claim has outlived its lease. Then the worker does
        not start it but hands it back, fenced by the claim's token (refused if
        another worker took the job meanwhile); this logs that and forgets the
        claim."""
        until = self._until.get(job.id)
        if until is None or now < until:
            return False
        del self._until[job.id]
        self.lapsed(job)
        return True

    def lapsed(self, job: Job) -> None:
        """Count and log a job handed back unstarted because its lease ran out."""
        self.stale_claims += 1
        logger.warning(
            "job %s %s handed back unstarted: its claim's lease ran out before it could start "
            "(was this process frozen, or the backend away?); another worker may hold it now",
            job.name,
            job.id,
        )


class Deadlines:
    """Waits that end at a loop time, or at once when `abort` is set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, abort: asyncio.Event) -> None:
        self._loop = loop
        self._abort = abort

    async def wait(
        self, tasks: Sequence[asyncio.Future[Any]], deadline: float, abortable: bool = True
    ) -> bool:
        """Wait for `tasks` until the loop time `deadline` (or the abort, when
        `abortable`); True when they all ended."""
        pending = {task for task in tasks if not task.done()}
        if not pending:
            return True
        if abortable and self._abort.is_set():
            return False
        aborted = asyncio.ensure_future(self._abort.wait()) if abortable else None
        try:
            while pending and not (aborted is not None and aborted.done()):
                left = deadline - self._loop.time()
                if left <= 0:
                    break
                wanted = pending if aborted is None else pending | {aborted}
                done, _ = await asyncio.wait(
                    wanted, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
        finally:
            if aborted is not None:
                aborted.cancel()
        return not pending

    async def call(self, call: Coroutine[Any, Any, Any], deadline: float) -> None:
        """Run a call for its effect only, giving up on it at `deadline`."""
        task = asyncio.ensure_future(call)
        task.add_done_callback(_ignore_outcome)
        if not await self.wait([task], deadline):
            task.cancel()

    @staticmethod
    async def cancel(task: asyncio.Future[Any]) -> None:
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_WAIT)


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve a task's exception so asyncio does not log it: its failure is
    expected (the backend is away) and reported elsewhere."""
    if not task.cancelled():
        task.exception()
