"""How a worker runs the jobs it claimed: the `JobRunning` half of `Worker`.

A claimed job starts if its claim still holds, its type is known and of a
version this worker can run, and its queue is not paused; else it is handed
back (fenced by its claim's token) or held for a newer worker. It runs in a
task (async handlers) or a pool thread (sync handlers), under its timeout,
and its outcome goes to the acknowledgements.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import (
    Backend,
    Outcome,
    OutcomeKind,
)
from conveyor.context import JobContext
from conveyor.job import (
    Job,
)
from conveyor.job_lines import HeldLines, job_line
from conveyor.worker.acks import (
    CANCELLED,
    LOST,
    RELEASED,
    TIMED_OUT,
    Acknowledgements,
    Running,
    handed_back,
    success,
    token_of,
)
from conveyor.worker.attempt import outcome_of_error
from conveyor.worker.clock import ClaimLeases
from conveyor.worker.newer import NewerJobs
from conveyor.worker.pauses import PauseWatch
from conveyor.worker.settings import WorkerSettings
from conveyor.worker.threads import HandlerThreads, LeaseLapsed, awaited_handler
from conveyor.worker.timeouts import Timeouts

if TYPE_CHECKING:
    from conveyor.events import EventBus
    from conveyor.observers import JobTracer
    from conveyor.registry import HandledTypes, JobType


logger = logging.getLogger("conveyor.worker")

# The worker's two lines per job.
_STARTED = "processing job %s %s (attempt %d)"
_COMPLETED = "job %s %s completed in %.0f ms"

# Jobs handed back for want of a handler, remembered so that a backend that
# returns the same job again (it ignores `names`) cannot make a loop of it.
_HANDED_BACK_MEMORY = 10_000


class JobRunning:
    """The job-running half of `Worker` (which sets these attributes)."""

    backend: Backend
    registry: HandledTypes
    events: EventBus
    settings: WorkerSettings
    _tracer: JobTracer | None
    _running: dict[str, Running]
    _backlog: deque[Job]
    _acks: Acknowledgements
    _claims: ClaimLeases
    _stopping: asyncio.Event
    _slot_freed: asyncio.Event
    _threads: HandlerThreads | None
    _loop: asyncio.AbstractEventLoop | None
    _pauses: PauseWatch
    _newer: NewerJobs
    _handed_back: dict[str, None]
    _ran: dict[str, None]
    _loops: list[asyncio.Task[None]]
    _idle_now: bool
    _lines: HeldLines
    _timeouts: Timeouts[Running]

    # Provided by Worker.
    def _clock(self) -> float:
        raise NotImplementedError

    def _capacity(self) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ running

    def _start_jobs(self, jobs: list[Job]) -> None:
        """Start (or hand back, hold, prefetch) claimed jobs; the "started"
        lines of those started are written before any of them runs."""
        for job in jobs:
            self._start_job(job)
        if self._lines:
            self._lines.write()

    def _start_job(self, job: Job) -> None:
        """Its "started" line is held where only conveyor's text handler
        would see it (the caller writes it: `_start_jobs`), else logged as a
        record by the job's own task (`_execute`)."""
        if self._claims.stale(job, self._clock()):
            # Fenced by the claim's token: back to the queue if no other
            # worker has taken the job meanwhile, else refused, harmlessly.
            self._ack(handed_back(job), job)
            return
        known = self.registry.get(job.name)
        if known is None and self._hand_back_unknown(job):
            return
        if job.queue in self._pauses.paused:
            # Claimed by a claim that was in flight when the pause was seen
            # (or prefetched before it): back to the queue, attempt uncounted.
            self._hand_back(job)
            return
        if known is not None and job.version > known.version:
            assert self._loop is not None
            self._newer.leave(job, known.version, self._loop)
            return
        if self._capacity() <= 0:
            # Every slot is taken by abandoned threads (a claim in flight
            # when the last one went): nothing here may start it soon.
            self._hand_back(job)
            return
        if len(self._running) >= self._capacity():
            self._backlog.append(job)
            return
        assert self._loop is not None
        lease_until = self._claims.until(job)
        self._claims.forget(job)
        ctx = JobContext(job, self._progress, self._loop)
        running = Running(job, ctx, lease_until=lease_until, job_type=known)
        self._running[job.id] = running
        running.task = self._loop.create_task(self._execute(running))
        if self.settings.burst:
            self._ran[job.id] = None
        running.started_held = self._lines.hold(
            logger, job, "started", _STARTED, job.name, job.id, job.attempts
        )
        if known is None or known.is_async:
            self._arm_timer(running)  # a sync handler's clock starts in its thread

    def _start_backlog(self) -> None:
        if self._backlog and self._capacity() <= 0:
            # Every slot is taken by abandoned threads, which may never
            # return: the prefetched jobs go back for other workers.
            self._hand_back_backlog()
            self._acks.flush()
            return
        started = False
        while self._backlog and len(self._running) < self._capacity():
            if self._stopping.is_set():
                break  # stop() hands the backlog back
            self._start_job(self._backlog.popleft())
            started = True
        if started and self._lines:
            self._lines.write()

    def _thread_returned(self) -> None:
        """An abandoned thread is back: a slot it took may be free again."""
        self._start_backlog()
        self._slot_freed.set()

    def _arm_timer(self, running: Running) -> None:
        timeout = running.job.timeout
        task = running.task
        if timeout is None or task is None or task.done():
            return
        if running.ctx.stop_reason not in (None, CANCELLED):
            return
        running.timeout_slice = self._timeouts.arm(running.job.id, running, timeout)

    def _expire(self, running: Running) -> None:
        task, reason = running.task, running.ctx.stop_reason
        if task is None or task.done():
            return
        if reason is None:
            running.ctx.mark_stopped(TIMED_OUT)
            task.cancel()
        elif reason == CANCELLED:
            # A sync handler told to stop that did not look by its timeout:
            # its thread is abandoned and the job recorded cancelled.
            task.cancel()

    async def _execute(self, running: Running) -> None:
        running.began = True
        job, ctx, job_type = running.job, running.ctx, running.job_type
        events = self.events
        if events.wants("job.started"):
            events.emit("job.started", job)
        began = time.monotonic()
        span = self._tracer.run(job) if self._tracer is not None else None
        if not running.started_held:  # a record: made here, in the job's task and span
            job_line(logger, job, "started", _STARTED, job.name, job.id, job.attempts)
        outcome: Outcome | None = None
        # The "completed" line's arguments, and whether it is held.
        completed: tuple[object, ...] = ()
        held, elapsed = False, 0.0
        try:
            if ctx.stop_reason is not None:
                # Told to stop before its task began (_tell_stop left the
                # task to get here): as if stopped at once, the handler unrun.
                raise asyncio.CancelledError
            if job_type is None:
                raise LookupError(f"no handler for job {job.name!r} is registered in this worker")
            result = await self._call(job_type, running)
            outcome = success(job, ctx, result)
        except asyncio.CancelledError as exc:
            outcome = outcome_of_error(job, ctx, job_type, exc)
            if outcome is None and ctx.stop_reason is None:
                raise  # cancelled by someone else than us: let it propagate
        except LeaseLapsed:
            # Its thread began too late (the process was frozen?): fenced by
            # the claim's token, back to the queue unless taken meanwhile.
            self._claims.lapsed(job)
            outcome = handed_back(job)
        except Exception as exc:
            outcome = outcome_of_error(job, ctx, job_type, exc)
        finally:
            if running.timeout_slice is not None:
                self._timeouts.disarm(job.id, running.timeout_slice)
            # Not ours any more if stop() handed the job back (_release).
            owned = self._running.get(job.id) is running
            if owned:
                del self._running[job.id]
                if outcome is not None:
                    outcome.logs = ctx.take_logs()
                    outcome.elapsed = elapsed = time.monotonic() - began
                    if outcome.kind is OutcomeKind.COMPLETED:
                        # Held before the backlog's next job is started (its
                        # "started" line is written with this one), else at
                        # the next loop step with this step's other jobs'.
                        completed = (job.name, job.id, elapsed * 1000)
                        held = self._lines.hold(
                            logger, job, "completed", _COMPLETED, *completed, duration=elapsed
                        )
            self._start_backlog()
            self._slot_freed.set()
            if span is not None:
                span.end(outcome if owned else None)
        if outcome is not None and owned:
            if outcome.kind is OutcomeKind.COMPLETED:
                if held:
                    assert self._loop is not None
                    self._lines.write_soon(self._loop)
                else:  # a record, made in the job's task
                    job_line(logger, job, "completed", _COMPLETED, *completed, duration=elapsed)
            self._ack(outcome, job)

    async def _call(self, job_type: JobType[Any], running: Running) -> Any:
        ctx = running.ctx
        payload = job_type.decode_payload(running.job.payload, running.job.version)
        if job_type.is_async:
            # Checked at dispatch, but the handler begins a loop step later,
            # after whatever the loop runs first (a process frozen in between).
            if self._clock() >= running.lease_until:
                raise LeaseLapsed
            return await awaited_handler(job_type.call(payload, ctx), ctx)
        assert self._threads is not None
        # On timeout or cancel this await is cancelled; the thread cannot be
        # interrupted, so it is told through ctx, its late result dropped, and
        # the thread counted as abandoned until it returns.
        return await self._threads.run(
            ctx,
            job_type.call,
            payload,
            ctx,
            may_begin=lambda: self._clock() < running.lease_until,
            on_start=functools.partial(self._arm_timer, running),
        )

    def _tell_stop(self, running: Running, reason: str) -> None:
        running.ctx.mark_stopped(reason)
        if not running.began:
            return  # its task sees the reason when it begins (_execute)
        if running.task is not None and running.task.get_loop() is self._loop:
            job_type = self.registry.get(running.job.name)
            if job_type is None or job_type.is_async or reason in (RELEASED, LOST):
                running.task.cancel()

    def _hand_back_backlog(self) -> None:
        """Prefetched jobs that never started go back to the queue at once,
        and so do the jobs of newer versions held a moment."""
        self._newer.release_all()
        while self._backlog:
            self._hand_back(self._backlog.popleft())

    def _hand_back(self, job: Job) -> None:
        """A claimed job that never started goes back to the queue. Its token
        fences the hand-back: were the claim stale and the job taken by
        another worker since, the backend refuses it."""
        self._claims.forget(job)
        self._ack(handed_back(job), job)

    def _hand_back_now(self, job: Job) -> None:
        """Hand back and send it now, not with the next claim."""
        self._hand_back(job)
        self._acks.flush()

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
        self._hand_back(job)
        return True

    def _release(self, running: Running) -> None:
        self._running.pop(running.job.id, None)
        if running.task is not None:
            running.task.cancel()
        self._ack(handed_back(running.job), running.job)

    async def _progress(self, job: Job, percent: float | None, logs: list[dict[str, Any]]) -> bool:
        held = await self.backend.progress(job.id, token_of(job), percent, logs)
        if percent is not None:
            job.progress = percent
        if not held and job.id in self._running:
            self._tell_stop(self._running[job.id], LOST)
        return held

    # ------------------------------------------------------------------ acknowledging

    def _ack(self, outcome: Outcome, job: Job) -> None:
        self._acks.add(outcome, job)
        # A busy claim loop takes the acknowledgement along with its next
        # claim; an idle or stopped one leaves it to the flusher.
        if self._idle_now or self._stopping.is_set() or self._loops[0].done():
            self._acks.flush()
