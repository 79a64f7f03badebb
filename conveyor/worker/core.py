"""The worker: claim loop, concurrency, heartbeats, timeouts, recovery, shutdown.

It talks to storage only through the `Backend` protocol. Claims and
acknowledgements are batched: a claim takes as many jobs as there are free
slots (half the room each, where two claim lanes are in flight), and
outcomes that finish while an acknowledgement is in flight are sent
together in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Backend, Retention
from conveyor.backends.optional import BlockingClaim
from conveyor.backends.stores import QueuePauses, WorkerRegistry
from conveyor.backends.url_options import without_secrets
from conveyor.job import (
    BackendMisconfiguredError,
    InvalidOptionError,
    Job,
)
from conveyor.job_lines import HeldLines
from conveyor.logs import show_worker_logs_if_unconfigured
from conveyor.outage import Outage
from conveyor.registry import handled
from conveyor.worker.acks import (
    MAX_RETRY_PAUSE,
    Acknowledgements,
    Running,
)
from conveyor.worker.claims import Claimer
from conveyor.worker.clock import CANCEL_WAIT, ClaimLeases, Deadlines
from conveyor.worker.duties import (
    Presence,
    fire_due_schedules,
    recover_expired_leases,
    scheduler_loop,
)
from conveyor.worker.leases import LeaseKeeping
from conveyor.worker.newer import NewerJobs
from conveyor.worker.pauses import PauseWatch
from conveyor.worker.running import JobRunning
from conveyor.worker.settings import WorkerSettings as WorkerSettings  # re-exported
from conveyor.worker.shutdown import STOP_GRACE as STOP_GRACE  # re-exported
from conveyor.worker.shutdown import GracefulStop
from conveyor.worker.threads import HandlerThreads
from conveyor.worker.timeouts import Timeouts

if TYPE_CHECKING:
    from conveyor.events import EventBus
    from conveyor.observers import JobTracer
    from conveyor.registry import JobType

logger = logging.getLogger("conveyor.worker")


class Worker(JobRunning, LeaseKeeping, GracefulStop):
    def __init__(
        self,
        backend: Backend,
        registry: Mapping[str, JobType[Any]],
        events: EventBus,
        settings: WorkerSettings,
        *,
        retention: Retention | None = None,
        open: Callable[[], Awaitable[None]] | None = None,
        tracer: JobTracer | None = None,
    ) -> None:
        """A worker of the jobs in `registry`, on `backend`. `open` readies
        the backend before the first claim (default: `backend.open`); the
        facade passes its own, which also keeps the backend from being opened
        twice. `app.worker(...)` builds one from an app."""
        self.backend = backend
        self.registry = handled(registry)  # declared-only types are not run here
        self.events = events
        self.retention = retention if retention is not None else Retention()
        self._open = open if open is not None else backend.open
        self._tracer = tracer  # a span per run (conveyor.tracing), or None
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.queues: tuple[str, ...] = settings.queues or _queues_of(self.registry)
        self._running: dict[str, Running] = {}
        self._backlog: deque[Job] = deque()  # prefetched, waiting for a slot
        # Shared by every loop that calls the backend: one line per outage.
        self._outage = Outage(backend.url)
        self._acks = Acknowledgements(backend, self.retention, events, self._outage)
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._threads: HandlerThreads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._abort = asyncio.Event()  # a second signal: stop() returns at once
        self._deadlines: Deadlines | None = None  # the waits of stop()
        self._claims = ClaimLeases(settings.lease, settings.heartbeat_every)
        self._stop_begun = False
        self._idle_now = False  # the claim loop waits for work (acks need the flusher)
        self._reserved = 0  # slots asked for by the claims in flight
        self._in_flight = 0  # exchanges in flight (claim lanes)
        self._more_work = False  # the last claim came back full
        # Claim lanes: two where the backend gains from it and there is room.
        lanes = backend.capabilities.claim_lanes
        self._lanes = 2 if lanes >= 2 and self._room() >= 2 else 1
        self._pauses = PauseWatch(
            backend if backend.capabilities.pause and isinstance(backend, QueuePauses) else None,
            self.queues,
            settings.pause_check_interval,
            self._outage,
            on_change=lambda: self._claimer.wake(),
        )
        self._claimer = Claimer(
            backend,
            self.id,
            lambda: self._pauses.active,
            lambda: self.names,
            settings,
            self.retention,
            self._acks,
            self._claims,
            self._clock,
        )
        self._presence: Presence | None = None
        self._tally: Counter[str] = Counter()  # lease_recoveries
        self._handed_back: dict[str, None] = {}  # ids of jobs handed back for want of a handler
        # Jobs of a newer version of their type, held a moment (newer.py).
        self._newer = NewerJobs(self._hand_back_now, settings.lease, self._clock)
        self._ran: dict[str, None] = {}  # burst mode: ids of the jobs started, in order
        self._lines = HeldLines()  # the lines per job, written a batch at a time
        # Why the worker stopped by itself, if it did: raised by run().
        self.failure: BackendMisconfiguredError | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            raise InvalidOptionError("this worker was already started; make a new one")
        self._started = True
        show_worker_logs_if_unconfigured()
        await self._open()
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop, self._abort)
        self._timeouts = Timeouts(self._loop, self._expire)
        self._threads = HandlerThreads(
            self.settings.concurrency,
            self.settings.abandoned_threads_tolerated,
            on_returned=self._thread_returned,
        )
        await self._pauses.refresh()  # no claim from a queue paused before the start
        if self.settings.burst:
            await fire_due_schedules(self.backend, self.registry, self.events, self.settings)
        # Said before the loops start: a burst with nothing to do ends at once.
        logger.info(
            "worker %s started: queues=%s concurrency=%d backend=%s",
            self.id,
            ",".join(self.queues),
            self.settings.concurrency,
            without_secrets(self.backend.url),
        )
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="conveyor-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="conveyor-heartbeat"),
            asyncio.create_task(
                recover_expired_leases(
                    self._outage,
                    self.backend,
                    self.settings.max_stalled,
                    self.retention,
                    self.events,
                    self.settings.recover_every,
                    self._tally,
                ),
                name="conveyor-recover",
            ),
        ]
        scheduler = scheduler_loop(
            self.backend,
            self.registry.types,
            self.events,
            self.settings,
            self._outage,
            self._stopping,
        )
        if scheduler is not None:
            self._loops.append(scheduler)
        self._loops.append(asyncio.create_task(self._pauses.keep(), name="conveyor-pauses"))
        if isinstance(self.backend, WorkerRegistry):
            self._presence = Presence(
                self.backend,
                self.id,
                self.queues,
                lambda: self.names,
                self._outage,
                self.settings,
                lambda: self.running_jobs,
            )
            await self._presence.beat()  # listed by app.workers() from now on
            self._loops.append(asyncio.create_task(self._presence.keep(), name="conveyor-presence"))

    @property
    def running_jobs(self) -> list[Job]:
        return [r.job for r in self._running.values()]

    @property
    def names(self) -> tuple[str, ...]:
        """The job names this worker has handlers for: the only ones it claims,
        so jobs of other types (a newer release's, in a rolling deploy) wait
        for a worker that knows them instead of failing here."""
        return tuple(self.registry)

    @property
    def processed(self) -> int:
        """Outcomes the backend has answered, of any kind."""
        return self._acks.sent

    def stats(self) -> dict[str, int]:
        """This worker's figures: jobs running and prefetched now, threads of
        sync handlers still busy after their job ended (timed out, cancelled,
        lost), outcomes not yet acknowledged; and since start, jobs finished
        (completed, failed, retrying or cancelled), handed back, claims
        handed back unstarted because their lease had run out, and jobs whose
        lease expired (any worker's) that this worker's recovery took back."""
        return {
            "running": len(self._running),
            "prefetched": len(self._backlog),
            "abandoned_threads": self._threads.abandoned if self._threads is not None else 0,
            "unacknowledged": len(self._acks),
            "finished": self._acks.finished,
            "handed_back": self._acks.handed_back,
            "stale_claims": self._claims.stale_claims,
            "lease_recoveries": self._tally["lease_recoveries"],
        }

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self) -> None:
        """Claim as many jobs as there are free slots, taking along the
        acknowledgements waiting to be sent (one round trip for both where the
        backend can). When there is no work it waits on the backend, and
        acknowledgements go out through the flusher instead.

        On a backend that gains from it (`Capabilities.claim_lanes`) and with
        room for two jobs or more, a second lane keeps another exchange in
        flight while the queue is busy, each lane claiming up to half the
        room: the backend works on one while this process starts the other's
        jobs and gathers their outcomes, where one exchange at a time leaves
        each idle in turn. Only the first lane waits on the backend for work;
        the second wakes when the first found a full batch (more is likely
        waiting) or when outcomes wait while the first is in flight."""
        second: asyncio.Task[None] | None = None
        if self._lanes == 2:
            second = asyncio.create_task(self._claim_lane(first=False), name="conveyor-claim-2")
        try:
            await self._claim_lane(first=True)
        except asyncio.CancelledError:
            # stop() gave up on the claim loop: the second lane's exchange is
            # given up at once too, so that its outcomes are back in time for
            # stop()'s last flush (waiting CANCEL_WAIT first put them back after it).
            if second is not None:
                second.cancel()
            raise
        finally:
            if second is not None:
                await self._end_lane(second)
        await self._unclaim_lost_before_exit()

    async def _end_lane(self, lane: asyncio.Task[None]) -> None:
        """Let the second lane end by itself (its exchange in flight answered,
        its jobs handed back), as long as the first lane would have: stop()
        bounds both by cancelling this task, which cancels the lane at once;
        it then puts its outcomes back."""
        self._slot_freed.set()  # a waiting lane sees the stop
        try:
            await asyncio.wait([lane])
        finally:
            if not lane.done():
                lane.cancel()
                await asyncio.wait([lane], timeout=CANCEL_WAIT)
            # Still pending when its own undoing of a lost claim hangs (it
            # ends by itself within that wait): exception() would raise then.
            if lane.done() and not lane.cancelled() and lane.exception() is not None:
                logger.error("claim lane failed: %r", lane.exception())

    async def _claim_lane(self, first: bool) -> None:
        failures = 0
        pause = self._sleep_idle if first else self._sleep_unless_stopping
        # Once stopping, what is left to acknowledge goes out through stop().
        while not self._stopping.is_set():
            if await self._newer.pause(pause):
                continue
            free = self._claimable()
            if first:
                waits = free <= 0 and not len(self._acks)
            else:
                # Outcomes go now only if the first lane is in flight (else
                # it takes them, or the flusher does while it waits for work).
                acks = len(self._acks) > 0 and self._in_flight > 0
                waits = not acks and (free <= 0 or not self._more_work)
            if waits:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            batch = self._acks.take()
            sent = bool(batch.outcomes)
            sent_at = self._outage.clock()
            try:
                with self._asking(free):
                    jobs = await self._claimer.exchange(batch, free)
                self._outage.answered(sent_at)
                failures = 0
            except asyncio.CancelledError:
                self._acks.put_back(batch)  # stop() gave up on this exchange
                await self._unclaim_lost_before_exit()
                raise
            except BackendMisconfiguredError as exc:
                self._acks.put_back(batch)
                self._give_up(exc)
                break
            except Exception as exc:
                self._acks.put_back(batch)
                failures += 1
                self._outage.failed("claim", exc)
                await pause(min(0.1 * 2**failures, MAX_RETRY_PAUSE))
                continue
            if self._stopping.is_set():
                # Told to stop while the claim was in flight: these jobs go
                # back unstarted, as stop() does with prefetched ones.
                for job in jobs:
                    self._hand_back(job)
                break
            self._start_jobs(jobs)
            self._note_batch(free, jobs)
            if not first or free <= 0 or jobs or sent:
                continue
            if not self.settings.burst:
                await self._idle()
            elif await self._burst_over():
                # A paused queue's due jobs were not looked at: say so, or
                # "nothing due" would read as if they had run.
                paused = sorted(self._pauses.paused)
                left = f"; paused, left as they are: {', '.join(paused)}" if paused else ""
                logger.info(
                    "worker %s: nothing due and nothing running; burst over%s", self.id, left
                )
                self._stopping.set()  # run() / run_burst() go on to stop()
                break

    async def _burst_over(self) -> bool:
        """Burst mode, after a claim found nothing due: True when nothing runs
        here either and every outcome is acknowledged (a retry already due,
        or a job enqueued by a job, is then claimable, and the claim above
        would have taken it). Else wait for a running job to end (or stop())."""
        if len(self._acks):
            return False  # the next claim takes them along
        if self._running or self._in_flight:
            # The other lane's exchange may bring jobs, or carry outcomes
            # that make some due (a retry, a job enqueued by a job): wait for
            # it as for a running job (both set _slot_freed when they end).
            self._slot_freed.clear()
            await self._slot_freed.wait()  # also set by stop()
            return False
        if self._backlog:
            return False  # prefetched jobs start as slots free
        flusher = self._acks.flusher
        if flusher is not None and not flusher.done():
            await asyncio.wait([flusher])
            return False
        return True

    async def run_burst(self) -> None:
        """Burst mode without signal handlers (`app.drain()`): start, run what
        is due until nothing is, stop."""
        if not self.settings.burst:
            raise InvalidOptionError("run_burst() needs a worker with burst=True")
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()
        if self.failure is not None:
            raise self.failure

    @property
    def ran(self) -> tuple[str, ...]:
        """Burst mode: the ids of the jobs this worker started, in order of first start."""
        return tuple(self._ran)

    def _free_slots(self) -> int:
        """How many jobs to claim: free slots plus prefetch, none while stopping
        or while abandoned threads take every slot."""
        capacity = self._capacity()
        if self._stopping.is_set() or capacity <= 0:
            return 0
        return max(0, capacity + self.settings.prefetch - len(self._running) - len(self._backlog))

    def _asking(self, free: int) -> _Asking:
        """A claim in flight for `free` jobs: the other lane asks for the rest."""
        return _Asking(self, free)

    def _note_batch(self, free: int, jobs: list[Job]) -> None:
        """After a claim for `free` jobs: a full batch means more is likely
        waiting, worth the second lane's claim (woken here); less, not."""
        if free > 0:
            self._more_work = len(jobs) == free
            if self._more_work:
                self._slot_freed.set()

    def _room(self) -> int:
        """Jobs this worker holds at most: running and prefetched."""
        return self.settings.concurrency + self.settings.prefetch

    def _claimable(self) -> int:
        """What one claim may ask for: the free slots not already asked for
        by a claim in flight, and with two lanes at most half the room."""
        free = max(0, self._free_slots() - self._reserved)
        return min(free, (self._room() + 1) // 2) if self._lanes == 2 else free

    def _capacity(self) -> int:
        """Jobs that may run at once: the concurrency, less the slots taken by
        abandoned threads beyond those tolerated (see threads.py)."""
        assert self._threads is not None
        return self.settings.concurrency - self._threads.lost_slots

    async def _unclaim_lost_before_exit(self) -> None:
        await self._claimer.unclaim_lost_before_exit(CANCEL_WAIT if self._abort.is_set() else 2.0)

    def _clock(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def _idle(self) -> None:
        self._idle_now = True
        if len(self._acks):
            self._acks.flush()
        try:
            if await self._newer.pause(self._sleep_unless_stopping):
                return
            if self._claimer.blocking is not None and self._pauses.active:
                self._start_jobs(await self._claim_blocking(self._claimer.blocking))
            else:
                await self._claimer.wait_for_work(self._stopping)
        except BackendMisconfiguredError as exc:
            self._give_up(exc)
        except Exception as exc:
            self._outage.failed("waiting for work", exc)
            await self._sleep_unless_stopping(1.0)
        finally:
            self._idle_now = False

    def _give_up(self, exc: BackendMisconfiguredError) -> None:
        """The backend cannot serve this worker as it is set up: retrying
        would only hide that, so stop (as on SIGTERM) and let `run()` raise it."""
        if self.failure is None:
            logger.error("worker %s stopping: %s", self.id, exc)
            self.failure = exc
        self._stopping.set()
        self._slot_freed.set()

    async def _claim_blocking(self, backend: BlockingClaim) -> list[Job]:
        free = self._claimable()
        if free <= 0:
            return []
        with self._asking(free):
            jobs = await self._claimer.claim_blocking(backend, free)
        self._note_batch(free, jobs)
        if self._stopping.is_set():
            for job in jobs:
                self._hand_back(job)
            return []
        return jobs

    async def _sleep_idle(self, seconds: float) -> None:
        """Not claiming for a while: acknowledgements go out through the flusher."""
        self._idle_now = True
        try:
            await self._sleep_unless_stopping(seconds)
        finally:
            self._idle_now = False

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()


class _Asking:
    """`with worker._asking(free):` around a claim in flight (a class, not a
    generator: one per exchange, at thousands a second)."""

    __slots__ = ("_free", "_worker")

    def __init__(self, worker: Worker, free: int) -> None:
        self._worker, self._free = worker, free

    def __enter__(self) -> None:
        worker = self._worker
        worker._reserved += self._free
        worker._in_flight += 1

    def __exit__(self, *exc: object) -> None:
        worker = self._worker
        worker._reserved -= self._free
        worker._in_flight -= 1
        worker._slot_freed.set()  # its slots are free to ask for again


def _queues_of(registry: Mapping[str, JobType[Any]]) -> tuple[str, ...]:
    queues = {"default"} | {t.defaults.queue for t in registry.values()}
    return tuple(sorted(queues))
