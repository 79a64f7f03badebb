"""One LISTEN connection per event loop, shared by every idle waiter of it.

Enqueues NOTIFY the channel of their schema with the queue's name (the
insert trigger, or the backend after an UPDATE made jobs claimable); the
listener counts notifications per queue and wakes the waiters, each of which
looks at the counts of its own queues. A lost connection is made again with
a backoff; every waiter is woken when it is back (notifications sent while
it was down are lost, so they look for work themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import psycopg
from psycopg import sql

from conveyor.backends._notify import Notifier

logger = logging.getLogger("conveyor.postgres")

_BACKOFF: Final = (0.1, 0.25, 0.5, 1.0, 2.0)


class Listener:
    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self.notifier = Notifier()
        self.counts: Counter[str] = Counter()  # queue -> notifications received
        self.epoch = 0  # connections made: a new one means notifications may be lost
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def mark(self, queues: Sequence[str]) -> tuple[int, int]:
        """What a waiter compares before and after waiting."""
        return self.epoch, sum(self.counts[q] for q in queues)

    def changed(self, queues: Sequence[str], mark: tuple[int, int]) -> Callable[[], bool]:
        """A check that a notification for `queues` (or a new connection)
        came since `mark` was read."""
        return lambda: self.mark(queues) != mark

    async def start(self, wait: float) -> bool:
        """Start listening (once); wait up to `wait` s for the LISTEN to be
        in place. False when it is not (the server is down): the caller
        then polls."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="conveyor-postgres-listener")
        if not self._listening.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._listening.wait()
        return self._listening.is_set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                logger.debug("LISTEN connection failed: %s", exc)
                await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
                continue
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                attempt = 0
                self.epoch += 1
                self._listening.set()
                self.notifier.notify()
                async for note in conn.notifies():
                    self.counts[note.payload] += 1
                    self.notifier.notify()
            except psycopg.Error as exc:
                logger.debug("LISTEN connection lost: %s", exc)
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
            attempt += 1
