"""The worker: claim loop, concurrency, heartbeats, timeouts, recovery, shutdown.

It talks to storage only through the `Backend` protocol. Claims and
acknowledgements are batched: a claim takes as many jobs as there are free
slots, and outcomes that finish while an acknowledgement is in flight are
sent together in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import (
    BlockingClaim,
    ClaimToken,
    FinishAndClaim,
    Heartbeat,
    LeaseStatus,
    Outcome,
    OutcomeKind,
    WorkerInfo,
    WorkerRegistry,
)
from conveyor.context import JobContext
from conveyor.job import InvalidOptionError, InvalidPayloadError, Job, JobState, Permanent, utc
from conveyor.registry import encode_json

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.registry import JobType

logger = logging.getLogger("conveyor.worker")

# Retries against an unreachable backend back off up to this, no further: once
# it is back, acknowledgements must go out before their jobs' leases expire.
_MAX_RETRY_PAUSE = 1.0

# Claims whose reply never came are undone before the next claim. With retries
# at most _MAX_RETRY_PAUSE apart, this many cover a default lease (30 s) of
# failed claims; older ones' leases have expired and recovery takes them back.
_MAX_LOST_CLAIMS = 32
# Presence: a worker records itself this often; a record not renewed for
# _PRESENCE_TTL seconds (a killed worker) counts as gone.
_PRESENCE_EVERY = 5.0
_PRESENCE_TTL = 20.0

# Jobs handed back for want of a handler, remembered so that a backend that
# returns the same job again (it ignores `names`) cannot make a loop of it.
_HANDED_BACK_MEMORY = 10_000

# Why a handler was told to stop; decides the outcome that gets recorded.
CANCELLED, TIMED_OUT, LOST, RELEASED = "cancelled", "timed out", "lease lost", "released"


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Every knob of a worker. `build()` applies the environment under code."""

    concurrency: int = 10
    # Jobs claimed ahead of free slots, started the moment a slot frees: the
    # next claim's round trip overlaps with running jobs. Prefetched jobs hold
    # a lease like running ones; keep it 0 for long jobs spread over many workers.
    prefetch: int = 0
    queues: tuple[str, ...] | None = None  # None: every queue the app's job types use
    lease: float = 30.0
    heartbeat_interval: float | None = None  # None: min(lease / 3, 1 s)
    recover_interval: float | None = None  # None: min(lease / 2, 5 s)
    max_stalled: int = 1
    shutdown_timeout: float = 30.0
    poll_interval: float = 1.0  # longest idle wait between claims
    scheduler: bool = True
    scheduler_interval: float = 1.0  # how often due schedules are looked for

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InvalidOptionError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.prefetch < 0:
            raise InvalidOptionError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.lease <= 0:
            raise InvalidOptionError(f"lease must be > 0 seconds, got {self.lease}")
        if self.max_stalled < 0:
            raise InvalidOptionError(f"max_stalled must be >= 0, got {self.max_stalled}")
        if self.shutdown_timeout < 0:
            raise InvalidOptionError("shutdown_timeout must be >= 0")
        if self.queues is not None and not all(self.queues):
            raise InvalidOptionError(f"queue names must be non-empty, got {self.queues!r}")

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or min(self.lease / 3, 1.0)

    @property
    def recover_every(self) -> float:
        return self.recover_interval or min(self.lease / 2, 5.0)

    @classmethod
    def build(cls, **given: Any) -> WorkerSettings:
        """Settings from code (`given`, None meaning "not given"), under which the
        environment fills what code left out. The CLI passes its flags here too,
        so flags win over the environment, which wins over defaults."""
        values = {k: v for k, v in given.items() if v is not None}
        env_readers: dict[str, tuple[str, Any]] = {
            "concurrency": ("CONVEYOR_CONCURRENCY", int),
            "prefetch": ("CONVEYOR_PREFETCH", int),
            "queues": ("CONVEYOR_QUEUES", _split_queues),
            "shutdown_timeout": ("CONVEYOR_SHUTDOWN_TIMEOUT", float),
            "scheduler": ("CONVEYOR_SCHEDULER", _parse_bool),
        }
        for key, (var, parse) in env_readers.items():
            raw = _env(var)
            if key not in values and raw is not None:
                try:
                    values[key] = parse(raw)
                except ValueError as exc:
                    raise InvalidOptionError(f"bad {var}={raw!r}: {exc}") from exc
        if "queues" in values and values["queues"] is not None:
            values["queues"] = tuple(values["queues"])
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidOptionError(f"unknown worker settings: {', '.join(sorted(unknown))}")
        return cls(**values)


def _split_queues(raw: str) -> tuple[str, ...]:
    queues = tuple(q.strip() for q in raw.split(",") if q.strip())
    if not queues:
        raise ValueError("no queue names")
    return queues


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


@dataclass(slots=True)
class _Running:
    job: Job
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


def _token(job: Job) -> ClaimToken:
    """The fencing token of a job this worker claimed."""
    # Every record a claim returns carries its token (backends/base.py).
    assert job.token is not None, f"job {job.id} came from a claim without a token"
    return job.token


def _timed_out(job: Job) -> TimeoutError:
    return TimeoutError(f"timed out after {job.timeout:g} s")


@dataclass(slots=True)
class _Acks:
    """Outcomes waiting to be sent, with the job each belongs to (for events)."""

    outcomes: list[Outcome] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)


class Worker:
    def __init__(self, app: Conveyor, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.queues: tuple[str, ...] = settings.queues or _queues_of(app)
        self._running: dict[str, _Running] = {}
        self._backlog: deque[Job] = deque()  # prefetched, waiting for a slot
        self._acks = _Acks()
        self._ack_task: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._force = False  # a second signal: hand back running jobs at once
        self._idle_now = False  # the claim loop waits for work (acks need the flusher)
        backend = app.backend
        self._combined: FinishAndClaim | None = (
            backend if isinstance(backend, FinishAndClaim) else None
        )
        self._blocking: BlockingClaim | None = (
            backend if isinstance(backend, BlockingClaim) else None
        )
        self._blocked_in: BlockingClaim | None = None  # set while in claim_blocking
        self._deadlines: list[tuple[float, int, _Running]] = []  # heap of job deadlines
        self._deadline_seq = 0
        self._deadline_added = asyncio.Event()
        self._claims_made = 0
        # Claims that raised (lost reply, timeout, dropped connection): they may
        # have leased jobs on the backend, which `unclaim` hands back.
        self._lost_claims: deque[str] = deque(maxlen=_MAX_LOST_CLAIMS)
        self.processed = 0
        self._presence: WorkerRegistry | None = (
            backend if isinstance(backend, WorkerRegistry) else None
        )
        self._started_at = 0.0
        self._handed_back: dict[str, None] = {}  # ids of jobs handed back for want of a handler

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
        await self.app.open()
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="conveyor-job"
        )
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="conveyor-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="conveyor-heartbeat"),
            asyncio.create_task(self._recover_loop(), name="conveyor-recover"),
        ]
        if self.settings.scheduler and self.app.backend.capabilities.recurring:
            from conveyor.scheduler import Scheduler

            scheduler = Scheduler(self.app, interval=self.settings.scheduler_interval)
            self._loops.append(
                asyncio.create_task(scheduler.run(self._stopping), name="conveyor-scheduler")
            )
        if self._presence is not None:
            self._started_at = time.time()
            await self._beat(self._presence)  # listed by app.workers() from now on
            self._loops.append(
                asyncio.create_task(self._presence_loop(self._presence), name="conveyor-presence")
            )
        logger.info(
            "worker %s started: queues=%s concurrency=%d backend=%s",
            self.id,
            ",".join(self.queues),
            self.settings.concurrency,
            self.app.url,
        )

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`), then shut down gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            await self._stopping.wait()
            await self.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            logger.warning("second %s: handing back running jobs now", sig.name)
            self._force = True
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
        running jobs, hand back the rest so another worker takes them at once."""
        if self._stopped.is_set() or not self._started:
            return
        self._stopping.set()
        self._slot_freed.set()
        if self._blocked_in is not None:
            with contextlib.suppress(Exception):
                await self._blocked_in.wake_waiter(self.id)
        limit = self.settings.shutdown_timeout if timeout is None else timeout
        # The claim loop ends by itself once it sees `_stopping` (cancelling it
        # could lose the acknowledgements of an exchange in flight).
        with contextlib.suppress(Exception):
            await self._loops[0]
        self._hand_back_backlog()
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks and not self._force:
            await asyncio.wait(tasks, timeout=limit)
        leftovers = list(self._running.values())
        if leftovers:
            logger.warning("handing back %d unfinished job(s)", len(leftovers))
            for running in leftovers:
                self._tell_stop(running, RELEASED)
            await asyncio.wait([r.task for r in leftovers if r.task is not None], timeout=1.0)
            for running in list(self._running.values()):
                # A sync handler's thread cannot be interrupted: hand its job back anyway.
                self._release(running)
        if self._ack_task is not None:
            await self._ack_task  # a batch may be in flight already
        await self._flush_acks()
        for task in self._loops[1:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._presence is not None:
            try:
                await self._presence.worker_gone(self.id)
            except Exception as exc:  # its record expires by itself
                logger.warning("could not remove this worker's presence record (%s)", exc)
        await self.app.events.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        logger.info("worker %s stopped after %d job(s)", self.id, self.processed)

    def request_stop(self) -> None:
        """Ask `run()` to shut down gracefully (thread-unsafe; call on the loop)."""
        self._stopping.set()

    @property
    def running_jobs(self) -> list[Job]:
        return [r.job for r in self._running.values()]

    @property
    def names(self) -> tuple[str, ...]:
        """The job names this worker has handlers for: the only ones it claims,
        so jobs of other types (a newer release's, in a rolling deploy) wait
        for a worker that knows them instead of failing here."""
        return tuple(self.app.registry)

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self) -> None:
        """Claim as many jobs as there are free slots, taking along the
        acknowledgements waiting to be sent (one round trip for both where the
        backend can). When there is no work it waits on the backend, and
        acknowledgements go out through `_flush_acks` instead."""
        settings = self.settings
        failures = 0
        while True:
            stopping = self._stopping.is_set()
            free = (
                0
                if stopping
                else settings.concurrency
                + settings.prefetch
                - len(self._running)
                - len(self._backlog)
            )
            if stopping and not self._acks.outcomes:
                await self._unclaim_lost_before_exit()
                return
            if free <= 0 and not self._acks.outcomes:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            batch, self._acks = self._acks, _Acks()
            claim_id: str | None = None
            try:
                await self._unclaim_lost()
                claim_id = self._new_claim_id()
                jobs = await self._exchange(batch, free, claim_id)
                if failures:
                    logger.warning("backend reachable again after %d failed call(s)", failures)
                failures = 0
            except Exception as exc:
                self._requeue_acks(batch)
                if claim_id is not None and free > 0:
                    self._lost_claims.append(claim_id)
                failures += 1
                pause = min(0.1 * 2**failures, _MAX_RETRY_PAUSE)
                logger.error("claim failed (%s); retrying in %.1f s", exc, pause)
                self._idle_now = True
                await self._sleep_unless_stopping(pause)
                self._idle_now = False
                continue
            for job in jobs:
                self._start_job(job)
            if free > 0 and not jobs and not batch.outcomes:
                await self._idle()

    async def _exchange(self, batch: _Acks, limit: int, claim_id: str) -> list[Job]:
        """Send `batch` and claim up to `limit` jobs under `claim_id`."""
        backend = self.app.backend
        lease = self.settings.lease
        names = self.names
        if not batch.outcomes:
            return await backend.claim(self.queues, limit, lease, claim_id=claim_id, names=names)
        if self._combined is not None and limit > 0:
            accepted, jobs = await self._combined.finish_and_claim(
                batch.outcomes,
                self.app.retention,
                self.queues,
                limit,
                lease,
                claim_id=claim_id,
                names=names,
            )
        else:
            accepted = await backend.finish(batch.outcomes, self.app.retention)
            jobs = []
            if limit > 0:
                jobs = await backend.claim(
                    self.queues, limit, lease, claim_id=claim_id, names=names
                )
        self._acknowledged(batch, accepted)
        return jobs

    def _new_claim_id(self) -> str:
        """An id for the next claim call, unique to it: the backend makes it
        (or derives from it) the fencing token of the jobs the call leases."""
        self._claims_made += 1
        return f"{self.id}/{self._claims_made}"

    async def _unclaim_lost(self) -> None:
        """Undo the claims whose reply never came, before claiming again: their
        jobs, which this worker never saw, go back to the queue now with their
        attempt uncounted, instead of waiting out the lease and being charged
        a stall (with max_stalled=1, two network blips would fail them)."""
        backend = self.app.backend
        while self._lost_claims:
            claim_id = self._lost_claims[0]
            handed_back = await backend.unclaim(claim_id)
            self._lost_claims.popleft()
            if handed_back:
                logger.warning(
                    "claim %s: its reply was lost; %d job(s) handed back", claim_id, handed_back
                )

    async def _unclaim_lost_before_exit(self) -> None:
        if not self._lost_claims:
            return
        try:
            async with asyncio.timeout(2.0):
                await self._unclaim_lost()
        except Exception as exc:
            logger.warning(
                "could not undo %d lost claim(s) (%s); their jobs come back when the lease expires",
                len(self._lost_claims),
                exc,
            )

    async def _idle(self) -> None:
        self._idle_now = True
        if self._acks.outcomes:
            self._start_flush()
        try:
            if self._blocking is not None:
                for job in await self._claim_blocking(self._blocking):
                    self._start_job(job)
            else:
                await self._wait_for_work()
        except Exception as exc:
            logger.error("waiting for work failed (%s); retrying in 1 s", exc)
            await self._sleep_unless_stopping(1.0)
        finally:
            self._idle_now = False

    async def _claim_blocking(self, backend: BlockingClaim) -> list[Job]:
        settings = self.settings
        free = settings.concurrency + settings.prefetch - len(self._running) - len(self._backlog)
        if self._stopping.is_set():
            return []
        self._blocked_in = backend
        claim_id = self._new_claim_id()
        try:
            # stop() ends this wait through wake_waiter() rather than abandon
            # it, so whatever the claim took is handed back now, not after its
            # lease expires.
            jobs = await backend.claim_blocking(
                self.queues,
                free,
                settings.lease,
                settings.poll_interval,
                self.id,
                claim_id=claim_id,
                names=self.names,
            )
        except Exception:
            self._lost_claims.append(claim_id)  # undone before the next claim
            raise
        finally:
            self._blocked_in = None
        if self._stopping.is_set():
            for job in jobs:
                self._ack(Outcome(job.id, _token(job), OutcomeKind.QUEUED, time.time()), job)
            return []
        return jobs

    async def _wait_for_work(self) -> None:
        waiter = asyncio.ensure_future(
            self.app.backend.wait_for_work(
                self.queues, self.settings.poll_interval, names=self.names
            )
        )
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (waiter, stopper):
                if not fut.done():
                    fut.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiter

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # ------------------------------------------------------------------ running

    def _start_job(self, job: Job) -> None:
        if job.name not in self.app.registry and self._hand_back_unknown(job):
            return
        if len(self._running) >= self.settings.concurrency:
            self._backlog.append(job)
            return
        assert self._loop is not None
        ctx = JobContext(job, self._progress, self._loop)
        running = _Running(job, ctx)
        self._running[job.id] = running
        running.task = self._loop.create_task(self._execute(running))
        if job.timeout is not None:
            # A bare timer, cancelled when the job ends: far cheaper per job
            # than an asyncio.timeout() block around the handler.
            running.timer = self._loop.call_at(
                self._loop.time() + job.timeout, self._expire, running
            )

    def _expire(self, running: _Running) -> None:
        if running.task is not None and not running.task.done() and running.ctx.stop_reason is None:
            running.ctx.mark_stopped(TIMED_OUT)
            running.task.cancel()

    async def _execute(self, running: _Running) -> None:
        job, ctx = running.job, running.ctx
        events = self.app.events
        job_type = self.app.registry.get(job.name)
        if events.wants("job.started"):
            events.emit("job.started", job)
        outcome: Outcome | None
        try:
            if job_type is None:
                raise LookupError(f"no handler for job {job.name!r} is registered in this worker")
            result = await self._call(job_type, job, ctx)
            outcome = self._success(job, ctx, result)
        except asyncio.CancelledError:
            if ctx.stop_reason == TIMED_OUT:
                outcome = self._failure(job, _timed_out(job), final=False, job_type=job_type)
            else:
                outcome = self._stopped_outcome(job, ctx)
                if outcome is None and ctx.stop_reason is None:
                    raise  # cancelled by someone else than us: let it propagate
        except (Permanent, InvalidPayloadError) as exc:
            # A payload that no longer fits its model fails the same way on
            # every attempt: retrying would only repeat it.
            outcome = self._failure(job, exc, final=True)
        except Exception as exc:
            if ctx.stop_reason == TIMED_OUT:
                outcome = self._failure(job, _timed_out(job), final=False, job_type=job_type)
            elif ctx.stop_reason is not None:
                outcome = self._stopped_outcome(job, ctx)
            else:
                outcome = self._failure(job, exc, final=False, job_type=job_type)
        finally:
            if running.timer is not None:
                running.timer.cancel()
            self._running.pop(job.id, None)
            if self._backlog and not self._stopping.is_set():
                self._start_job(self._backlog.popleft())
            self._slot_freed.set()
        if outcome is not None:
            outcome.logs = ctx.take_logs()
            self._ack(outcome, job)

    async def _call(self, job_type: JobType[Any], job: Job, ctx: JobContext) -> Any:
        payload = job_type.decode_payload(job.payload)
        if job_type.is_async:
            return await job_type.call(payload, ctx)
        assert self._loop is not None
        # On timeout or cancel this await is cancelled; the thread cannot be
        # interrupted, so it is told through ctx and its late result dropped.
        return await self._loop.run_in_executor(self._pool, job_type.call, payload, ctx)

    def _success(self, job: Job, ctx: JobContext, result: Any) -> Outcome:
        now = time.time()
        try:
            encoded = encode_json(result, f"the result of job {job.name!r}")
        except InvalidPayloadError as exc:
            # The same code would return the same value again: do not retry.
            return Outcome(job.id, _token(job), OutcomeKind.FAILED, now, error=str(exc))
        kind = OutcomeKind.CANCELLED if ctx.stop_reason == CANCELLED else OutcomeKind.COMPLETED
        return Outcome(job.id, _token(job), kind, now, result=encoded)

    def _stopped_outcome(self, job: Job, ctx: JobContext) -> Outcome | None:
        now = time.time()
        reason = ctx.stop_reason
        if reason == CANCELLED:
            return Outcome(job.id, _token(job), OutcomeKind.CANCELLED, now, error="cancelled")
        if reason == RELEASED:
            return Outcome(job.id, _token(job), OutcomeKind.QUEUED, now)
        return None  # LOST: another claim owns the job now; say nothing

    def _failure(
        self,
        job: Job,
        exc: BaseException,
        *,
        final: bool,
        job_type: JobType[Any] | None = None,
    ) -> Outcome:
        now = time.time()
        error = f"{type(exc).__name__}: {exc}"
        if not final and job.attempts <= job.max_retries:
            delay = job_type.backoff(job.attempts) if job_type is not None else 1.0
            return Outcome(
                job.id, _token(job), OutcomeKind.SCHEDULED, now, error=error, retry_in=delay
            )
        return Outcome(job.id, _token(job), OutcomeKind.FAILED, now, error=error)

    def _tell_stop(self, running: _Running, reason: str) -> None:
        running.ctx.mark_stopped(reason)
        if running.task is not None and running.task.get_loop() is self._loop:
            job_type = self.app.registry.get(running.job.name)
            if job_type is None or job_type.is_async or reason in (RELEASED, LOST):
                running.task.cancel()

    def _hand_back_unknown(self, job: Job) -> bool:
        """Hand back, untouched (no attempt counted), a job this worker has
        no handler for; claims ask for `self.names` only, so it came from a
        claim that did not filter by name. Only once per job: a backend that
        returns the same job again ignores names, and handing it back once
        more would loop, so then (False) it fails as "no handler", as before."""
        if job.id in self._handed_back:
            return False
        self._handed_back[job.id] = None
        if len(self._handed_back) > _HANDED_BACK_MEMORY:
            del self._handed_back[next(iter(self._handed_back))]
        logger.warning(
            "job %s %s: no handler for it in this worker; handed back for another", job.name, job.id
        )
        self._ack(Outcome(job.id, _token(job), OutcomeKind.QUEUED, time.time()), job)
        return True

    def _hand_back_backlog(self) -> None:
        """Prefetched jobs that never started go back to the queue at once."""
        while self._backlog:
            job = self._backlog.popleft()
            self._ack(Outcome(job.id, _token(job), OutcomeKind.QUEUED, time.time()), job)

    def _release(self, running: _Running) -> None:
        self._running.pop(running.job.id, None)
        if running.task is not None:
            running.task.cancel()
        self._ack(
            Outcome(running.job.id, _token(running.job), OutcomeKind.QUEUED, time.time()),
            running.job,
        )

    async def _progress(self, job: Job, percent: float | None, logs: list[dict[str, Any]]) -> bool:
        held = await self.app.backend.progress(job.id, _token(job), percent, logs)
        if percent is not None:
            job.progress = percent
        if not held and job.id in self._running:
            self._tell_stop(self._running[job.id], LOST)
        return held

    # ------------------------------------------------------------------ acknowledging

    def _ack(self, outcome: Outcome, job: Job) -> None:
        self._acks.outcomes.append(outcome)
        self._acks.jobs.append(job)
        # A busy claim loop takes the acknowledgement along with its next
        # claim; an idle or stopped one leaves it to the flusher.
        if self._idle_now or self._stopping.is_set() or self._loops[0].done():
            self._start_flush()

    def _start_flush(self) -> None:
        if self._ack_task is None or self._ack_task.done():
            assert self._loop is not None
            self._ack_task = self._loop.create_task(self._flush_acks())

    def _requeue_acks(self, batch: _Acks) -> None:
        """Put a batch whose sending failed back in front: a lost acknowledgement
        would make its job run again."""
        self._acks.outcomes[:0] = batch.outcomes
        self._acks.jobs[:0] = batch.jobs

    def _acknowledged(self, batch: _Acks, accepted: Sequence[bool]) -> None:
        self.processed += len(batch.outcomes)
        self._emit_outcomes(batch, accepted)

    async def _flush_acks(self) -> None:
        backend = self.app.backend
        failures = 0
        while self._acks.outcomes:
            batch, self._acks = self._acks, _Acks()
            try:
                accepted = await backend.finish(batch.outcomes, self.app.retention)
            except Exception as exc:
                self._requeue_acks(batch)
                failures += 1
                pause = min(0.1 * 2**failures, _MAX_RETRY_PAUSE)
                logger.error(
                    "acknowledging %d job(s) failed (%s); retrying in %.1f s",
                    len(batch.outcomes),
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                continue
            failures = 0
            self._acknowledged(batch, accepted)

    def _emit_outcomes(self, batch: _Acks, accepted: Sequence[bool]) -> None:
        events = self.app.events
        for outcome, job, ok in zip(batch.outcomes, batch.jobs, accepted, strict=True):
            if not ok:
                logger.warning(
                    "result of job %s attempt %d was refused: its lease was lost",
                    job.id,
                    job.attempts,
                )
                continue
            kind = outcome.kind
            if kind is OutcomeKind.FAILED:
                logger.error("job %s %s failed for good: %s", job.name, job.id, outcome.error)
            elif kind is OutcomeKind.SCHEDULED:
                logger.warning(
                    "job %s %s attempt %d failed (%s); retrying",
                    job.name,
                    job.id,
                    job.attempts,
                    outcome.error,
                )
            name = _EVENT_OF[kind]
            if name is not None and events.wants(name):
                events.emit(name, _finished_view(job, outcome))

    # ------------------------------------------------------------------ leases

    async def _heartbeat_loop(self) -> None:
        backend = self.app.backend
        while True:
            await asyncio.sleep(self.settings.heartbeat_every)
            running = list(self._running.values())
            waiting = list(self._backlog)
            # Finished jobs whose outcome is not stored yet (the backend may be
            # away) keep their lease too, or they would be run again.
            unacked = [Heartbeat(o.job_id, o.token) for o in self._acks.outcomes]
            if not running and not waiting and not unacked:
                continue
            beats = [Heartbeat(r.job.id, _token(r.job), r.ctx.take_logs()) for r in running]
            beats += [Heartbeat(job.id, _token(job)) for job in waiting]
            try:
                statuses = await backend.heartbeat(beats + unacked, self.settings.lease)
            except Exception as exc:
                logger.error("heartbeat failed (%s); will retry", exc)
                for r, beat in zip(running, beats, strict=False):
                    r.ctx._logs[:0] = beat.logs  # keep the lines for the next try
                continue
            self._check_backlog(waiting, statuses[len(running) : len(beats)])
            for r, status in zip(running, statuses, strict=False):
                if status is LeaseStatus.CANCEL:
                    self._tell_stop(r, CANCELLED)
                elif status is LeaseStatus.LOST and r.job.id in self._running:
                    logger.warning("job %s lost its lease; abandoning this attempt", r.job.id)
                    self._tell_stop(r, LOST)

    def _check_backlog(self, waiting: list[Job], statuses: Sequence[LeaseStatus]) -> None:
        for job, status in zip(waiting, statuses, strict=True):
            if status is LeaseStatus.HELD or job not in self._backlog:
                continue
            self._backlog.remove(job)
            if status is LeaseStatus.CANCEL:
                outcome = Outcome(job.id, _token(job), OutcomeKind.CANCELLED, time.time())
                outcome.error = "cancelled"
                self._ack(outcome, job)

    # ------------------------------------------------------------------ presence

    async def _beat(self, registry: WorkerRegistry) -> None:
        now = time.time()
        info = WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            names=tuple(sorted(self.names)),
            started_at=self._started_at,
            last_seen=now,
        )
        try:
            await registry.worker_beat(info, _PRESENCE_TTL)
        except Exception as exc:  # presence is for people looking on: never fatal
            logger.warning("could not record this worker's presence (%s); will retry", exc)

    async def _presence_loop(self, registry: WorkerRegistry) -> None:
        while True:
            await asyncio.sleep(_PRESENCE_EVERY)
            await self._beat(registry)

    async def _recover_loop(self) -> None:
        backend = self.app.backend
        while True:
            try:
                recovered = await backend.recover_expired(
                    None, self.settings.max_stalled, self.app.retention
                )
            except Exception as exc:
                logger.error("lease recovery failed (%s); will retry", exc)
                recovered = []
            for job in recovered:
                if job.state is JobState.FAILED:
                    logger.error("job %s %s failed: %s", job.name, job.id, job.error)
                    self.app.events.emit("job.failed", job)
                else:
                    logger.warning(
                        "job %s %s: its worker's lease expired; queued again", job.name, job.id
                    )
            await asyncio.sleep(self.settings.recover_every)


_EVENT_OF: dict[OutcomeKind, str | None] = {
    OutcomeKind.COMPLETED: "job.completed",
    OutcomeKind.FAILED: "job.failed",
    OutcomeKind.SCHEDULED: "job.retrying",
    OutcomeKind.CANCELLED: "job.cancelled",
    OutcomeKind.QUEUED: None,
}


def _finished_view(job: Job, outcome: Outcome) -> Job:
    """The job as it stands after `outcome`, for event callbacks (no refetch)."""
    state = {
        OutcomeKind.COMPLETED: JobState.COMPLETED,
        OutcomeKind.FAILED: JobState.FAILED,
        OutcomeKind.SCHEDULED: JobState.SCHEDULED,
        OutcomeKind.CANCELLED: JobState.CANCELLED,
        OutcomeKind.QUEUED: JobState.QUEUED,
    }[outcome.kind]
    result = None
    if outcome.result is not None:
        result = json.loads(outcome.result)
    final = outcome.kind in (OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.CANCELLED)
    run_at = outcome.run_at
    if outcome.retry_in is not None:  # as the backend reckons it, give or take the skew
        run_at = outcome.at + outcome.retry_in
    return replace(
        job,
        state=state,
        result=result,
        error=outcome.error,
        finished_at=utc(outcome.at) if final else None,
        run_at=utc(run_at) if run_at is not None else job.run_at,
    )


def _queues_of(app: Conveyor) -> tuple[str, ...]:
    queues = {"default"} | {t.defaults.queue for t in app.registry.values()}
    return tuple(sorted(queues))
