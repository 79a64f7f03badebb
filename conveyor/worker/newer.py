"""Jobs enqueued with a newer version of their type than this worker runs.

In a rolling deploy a new producer may enqueue version 3 of a type while old
workers still run version 2: those must not run (or fail) the job, and must
not burn its attempts. Claims filter by job name only, so an old worker can
claim such a job; it then holds the claim for a moment before handing it
back, attempt not counted. Handing it back at once would not do: it is the
queue's head, so the same worker would claim it again straight away, round
trip after round trip, and never reach the older jobs queued behind it.
Held, it is out of this worker's way (its next claims take the jobs behind
it) and is offered again a moment later. Then this worker stops claiming for
a short pause: its next claim would otherwise win the race for the job every
time (it claims along with the hand-back, in one round trip), and the newer
workers woken by the hand-back would never get their turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from conveyor.job import Job

logger = logging.getLogger("conveyor.worker")

# How long a newer job is held before it goes back to the queue (at most a
# quarter of the lease, which must outlast the hold).
HOLD: float = 2.0
# How long this worker leaves claiming to others after handing one back.
PAUSE: float = 0.5
# Jobs already reported, so a job met again and again is logged once.
_REPORTED_MEMORY = 10_000


class NewerJobs:
    def __init__(
        self, hand_back: Callable[[Job], None], lease: float, clock: Callable[[], float]
    ) -> None:
        self._hand_back = hand_back  # must send the hand-back at once
        self._hold = min(HOLD, lease / 4)
        self._clock = clock
        self._paused_until = 0.0
        self._held: dict[str, tuple[Job, asyncio.TimerHandle]] = {}
        self._reported: dict[str, None] = {}
        self.left = 0  # how many times a job was left for a newer worker

    def leave(self, job: Job, known: int, loop: asyncio.AbstractEventLoop) -> None:
        """Hold `job` (version newer than `known`) briefly, then hand it back."""
        if job.id not in self._reported:
            self._reported[job.id] = None
            if len(self._reported) > _REPORTED_MEMORY:
                del self._reported[next(iter(self._reported))]
            logger.warning(
                "job %s %s is version %d, newer than this worker's version %d of it: "
                "left for a worker that knows it (attempt not counted)",
                job.name,
                job.id,
                job.version,
                known,
            )
        self.left += 1
        self._held[job.id] = (job, loop.call_later(self._hold, self._release, job.id))

    async def pause(self, sleep: Callable[[float], Awaitable[None]]) -> bool:
        """Sleep out the pause after a hand-back, if any: True if it slept."""
        left = self._paused_until - self._clock()
        if left <= 0:
            return False
        await sleep(left)
        return True

    def _release(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        if held is not None:
            self._paused_until = self._clock() + PAUSE
            self._hand_back(held[0])

    def release_all(self) -> None:
        """Hand back every held job now (the worker is stopping)."""
        for job_id in list(self._held):
            self._held[job_id][1].cancel()
            self._release(job_id)
