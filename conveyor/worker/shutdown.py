"""How a worker stops: on SIGTERM/SIGINT or `stop()` it stops claiming,
waits up to the shutdown timeout for running jobs, hands back the rest, and
sends its last acknowledgements, every wait bounded by a deadline, so that a
backend that does not answer cannot hold the process; a second signal makes
it leave at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from conveyor.backends.optional import HeldMessages
from conveyor.job_lines import HeldLines
from conveyor.worker.acks import RELEASED, Acknowledgements, Running
from conveyor.worker.clock import CANCEL_WAIT, ClaimLeases, Deadlines
from conveyor.worker.timeouts import Timeouts

if TYPE_CHECKING:
    from conveyor.backends.base import Backend
    from conveyor.events import EventBus
    from conveyor.job import BackendMisconfiguredError
    from conveyor.worker.claims import Claimer
    from conveyor.worker.duties import Presence
    from conveyor.worker.settings import WorkerSettings
    from conveyor.worker.threads import HandlerThreads

logger = logging.getLogger("conveyor.worker")

# How long stop() may run past the shutdown timeout: for handing back, the
# last acknowledgements and event callbacks. Past it, what the backend has not
# taken is given up (logged; those jobs come back when their lease expires).
STOP_GRACE = 2.0
# After a second SIGTERM/SIGINT: one short last try to hand jobs back.
_ABORT_FLUSH = 0.5


class GracefulStop:
    """The stopping half of `Worker` (which sets these attributes)."""

    id: str
    backend: Backend
    settings: WorkerSettings
    events: EventBus
    _loop: asyncio.AbstractEventLoop | None
    _loops: list[asyncio.Task[None]]
    _running: dict[str, Running]
    _acks: Acknowledgements
    _claims: ClaimLeases
    _claimer: Claimer
    _deadlines: Deadlines | None
    _threads: HandlerThreads | None
    _presence: Presence | None
    _stopping: asyncio.Event
    _stopped: asyncio.Event
    _slot_freed: asyncio.Event
    _abort: asyncio.Event
    _stop_begun: bool
    _lines: HeldLines
    _timeouts: Timeouts[Running]
    failure: BackendMisconfiguredError | None

    # Provided by Worker.
    async def start(self) -> None:
        raise NotImplementedError

    def _tell_stop(self, running: Running, reason: str) -> None:
        raise NotImplementedError

    def _hand_back_backlog(self) -> None:
        raise NotImplementedError

    def _release(self, running: Running) -> None:
        raise NotImplementedError

    def _clock(self) -> float:
        raise NotImplementedError

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        installed = []
        # Before start(): a signal while the backend opens, or just after the
        # first claims, must stop the worker, not end the interpreter.
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            await self.start()
            await self._stopping.wait()
            await self.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        if self.failure is not None:
            raise self.failure

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            logger.warning("second %s: handing back running jobs and leaving now", sig.name)
            self._abort.set()
            for running in list(self._running.values()):
                self._tell_stop(running, RELEASED)
            return
        logger.info(
            "%s received: finishing running jobs (up to %.0f s)",
            sig.name,
            self.settings.shutdown_timeout,
        )
        self._stopping.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, wait up to `timeout` (default: the shutdown timeout) for
        running jobs, hand back the rest so another worker takes them at once.

        Returns within `timeout` + STOP_GRACE whatever the backend does: what
        it has not acknowledged by then is logged and left to lease expiry. A
        second SIGTERM/SIGINT (under `run()`) makes it return at once."""
        if not self._loops:
            return  # never started, or start() failed before anything ran
        if self._stop_begun:
            await self._stopped.wait()  # a stop() under way is bounded
            return
        self._stop_begun = True
        assert self._loop is not None and self._deadlines is not None
        deadlines = self._deadlines
        limit = self.settings.shutdown_timeout if timeout is None else timeout
        jobs_deadline = self._loop.time() + limit
        deadline = jobs_deadline + STOP_GRACE
        self._stopping.set()
        self._slot_freed.set()
        try:
            await self._wind_down(jobs_deadline, deadline)
            if self._abort.is_set():
                await self._flush_until(self._loop.time() + _ABORT_FLUSH, abortable=False)
            for task in self._loops:
                task.cancel()
            await asyncio.wait(self._loops, timeout=CANCEL_WAIT)
            if self._presence is not None and not self._abort.is_set():
                # Its record expires by itself when this does not get through.
                gone = self._presence.gone()
                await deadlines.call(gone, max(deadline, self._clock() + CANCEL_WAIT))
            if not self._abort.is_set():
                # Callbacks of the last outcomes get a moment even at the deadline.
                drain = asyncio.ensure_future(self.events.drain())
                if not await deadlines.wait([drain], max(deadline, self._clock() + CANCEL_WAIT)):
                    logger.warning("event callbacks still running at shutdown were cancelled")
                    await deadlines.cancel(drain)
        finally:
            assert self._threads is not None
            self._threads.shutdown()
            self._lines.write()  # lines of the last jobs, before the worker's last line
            self._timeouts.close()  # its timers would keep this worker alive
            self._acks.log_unacknowledged()
            self._stopped.set()
        stale = self._claims.stale_claims
        extra = f", {stale} stale claim(s) handed back unstarted" if stale else ""
        logger.info(
            "worker %s stopped: %d job(s) finished, %d handed back%s",
            self.id,
            self._acks.finished,
            self._acks.handed_back,
            extra,
        )

    async def _wind_down(self, jobs_deadline: float, deadline: float) -> None:
        """The graceful part of stop(). Every wait ends by `deadline` (running
        jobs get until `jobs_deadline`), and at once after a second signal."""
        assert self._loop is not None and self._deadlines is not None
        deadlines = self._deadlines
        blocked_in = self._claimer.blocked_in
        if blocked_in is not None:
            # End the blocking wait rather than abandon it, so whatever its
            # claim took is handed back now, not after its lease expires.
            await deadlines.call(
                blocked_in.wake_waiter(self.id), min(deadline, self._loop.time() + 1.0)
            )
        # The claim loop ends by itself once it sees `_stopping` (cancelling it
        # could lose the acknowledgements of an exchange in flight), unless
        # the backend does not answer.
        claim_loop = self._loops[0]
        if not await deadlines.wait([claim_loop], deadline):
            await deadlines.cancel(claim_loop)
        self._hand_back_backlog()
        tasks = [r.task for r in self._running.values() if r.task is not None]
        await deadlines.wait(tasks, jobs_deadline)
        leftovers = list(self._running.values())
        if leftovers:
            logger.warning("handing back %d unfinished job(s)", len(leftovers))
            for running in leftovers:
                self._tell_stop(running, RELEASED)
            await deadlines.wait(
                [r.task for r in leftovers if r.task is not None],
                min(deadline, self._loop.time() + 1.0),
            )
            for running in list(self._running.values()):
                # A sync handler's thread cannot be interrupted: hand its job back anyway.
                self._release(running)
        await self._flush_until(deadline)
        # Outcomes resent after a lost reply are checked against the stored job.
        await deadlines.wait(list(self._acks.checks), deadline)
        if isinstance(self.backend, HeldMessages):
            # Work the backend held back for this worker's next claims (the
            # outcomes above may have just made it due) goes back at once;
            # if this fails, it comes back when its lease ends.
            until = max(deadline, self._clock() + CANCEL_WAIT)
            await deadlines.call(self._release_held(self.backend), until)

    async def _release_held(self, backend: HeldMessages) -> None:
        try:
            await backend.release_held()
        except Exception as exc:
            logger.warning(
                "could not give back held work (it comes back when its lease ends): %s", exc
            )

    def request_stop(self) -> None:
        """Ask `run()` to shut down gracefully (thread-unsafe; call on the loop)."""
        self._stopping.set()

    async def _flush_until(self, deadline: float, abortable: bool = True) -> None:
        """Send what is left to acknowledge, retrying until `deadline`."""
        flusher = self._acks.flusher
        while len(self._acks) or (flusher is not None and not flusher.done()):
            flusher = self._acks.flush()
            assert self._deadlines is not None
            if not await self._deadlines.wait([flusher], deadline, abortable):
                await self._deadlines.cancel(flusher)
                return
