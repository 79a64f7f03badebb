"""Which of a worker's queues are paused (`app.pause(queue)`).

The paused set is kept by the backend (`QueuePauses`); a worker reads it
every `pause_check_interval` seconds (1 s by default) and leaves the paused
queues out of its claims and of its waits for work, saying so once in its
log when a queue is paused and when it is resumed.

Why the worker filters its queue list rather than the backend's claim
filtering by the set: a claim is the hot path (thousands a second on Redis),
and a look-up of the set in every claim would cost each of them, on every
backend, for a state that changes a few times a day. Reading the set once a
second costs one small read per worker per second, whatever the load. The
price is the bound: a worker stops claiming from a queue within
`pause_check_interval` of the pause, not at once. A job that a claim already
in flight brings back from a queue paused meanwhile (or a prefetched one) is
handed back unstarted, attempt uncounted, so no job of a paused queue starts
later than that; a blocking claim under way is ended when a change is seen,
so a resume is not held up by its wait either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from conveyor.backends.stores import QueuePauses
from conveyor.outage import Outage

logger = logging.getLogger("conveyor.worker")


class PauseWatch:
    def __init__(
        self,
        pauses: QueuePauses | None,
        queues: tuple[str, ...],
        every: float,
        outage: Outage,
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        """`pauses` None: the backend keeps no paused set (every queue is served)."""
        self._pauses = pauses
        self._queues = queues
        self._every = every
        self._outage = outage
        self._on_change = on_change
        self._paused: frozenset[str] = frozenset()
        self.active: tuple[str, ...] = queues  # the queues to claim from now

    @property
    def paused(self) -> frozenset[str]:
        """This worker's queues that are paused, as last read."""
        return self._paused

    async def refresh(self) -> None:
        """Read the paused set; on a change, log it and call `on_change`. A
        failed read keeps the set last read (the outage is logged once)."""
        if self._pauses is None:
            return
        sent_at = self._outage.clock()
        try:
            paused = await self._pauses.paused_queues()
        except Exception as exc:
            self._outage.failed("reading the paused queues", exc)
            return
        self._outage.answered(sent_at)
        mine = frozenset(paused) & frozenset(self._queues)
        if mine == self._paused:
            return
        for queue in sorted(mine - self._paused):
            logger.info("queue %s paused; not claiming from it", queue)
        for queue in sorted(self._paused - mine):
            logger.info("queue %s resumed; claiming from it again", queue)
        self._paused = mine
        self.active = tuple(queue for queue in self._queues if queue not in mine)
        await self._on_change()

    async def keep(self) -> None:
        if self._pauses is None:
            return
        while True:
            await asyncio.sleep(self._every)
            await self.refresh()
