"""One LISTEN connection per event loop, shared by every idle waiter of it.

Enqueues NOTIFY the channel of their schema with the queue and the job name
(the insert trigger, or the backend after an UPDATE made jobs claimable);
the listener counts notifications per queue and per (queue, name) and wakes
the waiters, each of which looks at the counts of the work it serves. A
lost connection is made again with a backoff; every waiter is woken when it
is back (notifications sent while it was down are lost, so they look for
work themselves).

Each new LISTEN connection first proves that notifications reach it: a
probe NOTIFY is sent from a pooled connection and must come back. Behind a
pooler in transaction mode (PgBouncer's `pool_mode=transaction`) the LISTEN
stays on a server connection that goes back to the pool, and nothing it
hears is passed on; workers would silently fall back to their poll
interval. The listener then fails for good (`failure`), and the waiters
raise BackendMisconfiguredError, which stops a worker with the reason.

The probe goes again every LIVENESS_EVERY seconds while the connection is
up: a connection cut off without a word (a network cut, a NAT or load
balancer dropping an idle flow: no FIN, no RST) would otherwise hear nothing
for hours while looking alive, and workers would wake only at their poll
interval. One that no longer hears its probe is said at WARNING and made
again. (The regular traffic also keeps such idle flows open.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import psycopg
from psycopg import sql

from conveyor.backends._notify import Notifier
from conveyor.backends.postgres.sql import WAKE_SEPARATOR
from conveyor.job import BackendMisconfiguredError

logger = logging.getLogger("conveyor.postgres")

_BACKOFF: Final = (0.1, 0.25, 0.5, 1.0, 2.0)
# The self-test: how long a probe may take to come back, and how many are
# sent before giving up (a second one, in case the event loop was too busy
# to read the first in time).
PROBE_WAIT: Final = 3.0
PROBE_ATTEMPTS: Final = 2
# How often a connection that passed its self-test is proven again.
LIVENESS_EVERY = 30.0
# What a probe's payload begins with (a wake is a queue and a job name
# joined by WAKE_SEPARATOR, which a probe never holds).
_PROBE_PREFIX: Final = "conveyor-probe:"

SendProbe = Callable[[str, str], Awaitable[None]]  # (channel, payload)


class _ConnectionLost(Exception):
    """The LISTEN connection ended, or the probe could not be sent."""


class Listener:
    def __init__(self, conninfo: str, channel: str, send_probe: SendProbe, where: str) -> None:
        """`send_probe(channel, payload)` NOTIFYs from another connection
        (the backend's pool, the way jobs' notifications come); `where`
        names the server in messages."""
        self._conninfo = conninfo
        self._channel = channel
        self._send_probe = send_probe
        self._where = where
        self.notifier = Notifier()
        self.by_queue: Counter[str] = Counter()  # notifications received per queue
        self.by_pair: Counter[tuple[str, str]] = Counter()  # and per (queue, job name)
        self.epoch = 0  # connections made: a new one means notifications may be lost
        self.failure: BackendMisconfiguredError | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._probe = ""  # the payload of the probe under way
        self._probe_back = asyncio.Event()
        # Once a self-test passed, notifications do reach this channel: a
        # later one that fails (a busy server, a cut connection) is a lost
        # connection, made again, not the pooler's misuse that stops workers.
        self._proven = False

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def check(self) -> None:
        """Raise the self-test's failure, if it failed."""
        if self.failure is not None:
            raise self.failure

    def mark(self, queues: Sequence[str], names: Sequence[str] | None) -> tuple[int, int]:
        """What a waiter compares before and after waiting: the connections
        made, and the notifications for its queues (and job names; None: any)."""
        if names is None:
            return self.epoch, sum(self.by_queue[q] for q in queues)
        return self.epoch, sum(self.by_pair[(q, n)] for q in queues for n in names)

    def changed(
        self, queues: Sequence[str], names: Sequence[str] | None, mark: tuple[int, int]
    ) -> Callable[[], bool]:
        """A check that a notification for this work (or a new connection, or
        the self-test's failure) came since `mark` was read."""
        return lambda: self.failure is not None or self.mark(queues, names) != mark

    async def start(self, wait: float) -> bool:
        """Start listening (once); wait up to `wait` s for the LISTEN to be
        in place and proven. False when it is not yet (the server is down,
        or the self-test is under way): the caller then polls.
        BackendMisconfiguredError when notifications cannot reach it."""
        self.check()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="conveyor-postgres-listener")
        if not self._listening.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._listening.wait()
        self.check()
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
                reader = asyncio.create_task(self._read(conn))
                try:
                    await self._self_test(reader)
                    self._proven = True
                    attempt = 0
                    self.epoch += 1
                    self._listening.set()
                    self.notifier.notify()
                    await self._keep_proving(reader)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
            except (psycopg.Error, _ConnectionLost) as exc:
                logger.debug("LISTEN connection lost: %s", exc)
            except BackendMisconfiguredError as exc:
                if self._proven:
                    logger.warning(
                        "the LISTEN connection to %s did not hear its probe; connecting again",
                        self._where,
                    )
                else:
                    self.failure = exc
                    self.notifier.notify()  # the waiters raise it
                    return
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
            attempt += 1

    async def _read(self, conn: psycopg.AsyncConnection[object]) -> None:
        async for note in conn.notifies():
            if note.payload.startswith(_PROBE_PREFIX) and WAKE_SEPARATOR not in note.payload:
                # A probe, this listener's or another's (every worker on the
                # schema sends its own): not a queue's wake.
                if note.payload == self._probe:
                    self._probe_back.set()
                continue
            queue, _, name = note.payload.partition(WAKE_SEPARATOR)
            self.by_queue[queue] += 1
            self.by_pair[(queue, name)] += 1
            self.notifier.notify()
        raise _ConnectionLost("the LISTEN connection was closed")

    async def _keep_proving(self, reader: asyncio.Task[None]) -> None:
        """Until the connection ends, send the probe again every
        LIVENESS_EVERY seconds; raise _ConnectionLost when it no longer
        comes back (it did before: the connection is lost, not misused)."""
        while True:
            done, _ = await asyncio.wait({reader}, timeout=LIVENESS_EVERY)
            if done:
                await reader  # raises what ended it
            try:
                # Bounded: the probe's own send may hang on a cut-off pool.
                async with asyncio.timeout(PROBE_WAIT * (PROBE_ATTEMPTS + 1)):
                    await self._self_test(reader)
            except (BackendMisconfiguredError, TimeoutError) as exc:
                logger.warning(
                    "the LISTEN connection to %s stopped hearing its probe NOTIFY (cut off"
                    " without a word?); connecting again",
                    self._where,
                )
                raise _ConnectionLost("the LISTEN connection stopped hearing") from exc

    async def _self_test(self, reader: asyncio.Task[None]) -> None:
        """Return once a probe NOTIFY, sent from another connection, came
        back on this one; raise BackendMisconfiguredError when none does."""
        for _ in range(PROBE_ATTEMPTS):
            self._probe = f"{_PROBE_PREFIX}{os.urandom(8).hex()}"
            self._probe_back.clear()
            try:
                await self._send_probe(self._channel, self._probe)
            except Exception as exc:  # the pool's server is down: as a lost connection
                raise _ConnectionLost(f"the probe NOTIFY failed: {exc}") from exc
            back = asyncio.ensure_future(self._probe_back.wait())
            try:
                await asyncio.wait(
                    {back, reader}, timeout=PROBE_WAIT, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                back.cancel()
            if self._probe_back.is_set():
                return
            if reader.done():
                reader.result()  # raises what ended the connection
                raise _ConnectionLost("the LISTEN connection ended")
        raise BackendMisconfiguredError(
            f"LISTEN/NOTIFY does not work through {self._where}: a NOTIFY sent on channel"
            f" {self._channel!r} never reached the connection listening on it (tried"
            f" {PROBE_ATTEMPTS} times, {PROBE_WAIT:g} s each). A connection pooler in"
            " transaction mode does this (PgBouncer with pool_mode=transaction): point"
            " workers at PgBouncer in session mode or at PostgreSQL directly"
        )
