"""Outcomes of a worker's runs, and their acknowledgement to the backend.

Outcomes are sent in batches. A busy claim loop takes the waiting batch along
with its next claim (one round trip for both where the backend can); an idle
or stopping worker sends it from a flusher task. A batch whose sending fails
goes back in front and is retried (a lost acknowledgement would make its job
run again) until stop() gives up at its deadline; those jobs then come back
through lease expiry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import (
    Backend,
    ClaimToken,
    Heartbeat,
    Outcome,
    OutcomeKind,
    Retention,
    attempt_outcome,
)
from conveyor.backoff import BadBackoffError
from conveyor.codec import decode_json, encode_json, storable
from conveyor.context import JobContext
from conveyor.events import EventBus
from conveyor.job import HISTORY_LIMIT, InvalidPayloadError, Job, JobState, attempt_entry, utc
from conveyor.logs import job_fields
from conveyor.outage import Outage

if TYPE_CHECKING:
    from conveyor.registry import JobType

logger = logging.getLogger("conveyor.worker")

# Retries against an unreachable backend back off up to this, no further: once
# it is back, acknowledgements must go out before their jobs' leases expire.
MAX_RETRY_PAUSE = 1.0

# The most of one traceback kept on a job (UTF-8 bytes, the cut note included):
# the innermost frames, where the error is, are the ones kept.
TRACEBACK_LIMIT = 8192

# Where the code that calls a handler lives: the worker, the registry's
# call, and the pool a blocking handler runs on.
_HERE = os.path.dirname(os.path.abspath(__file__))
_RUNNER_DIRS = frozenset(
    {_HERE}
    | {os.path.dirname(os.path.abspath(m.__file__ or "")) for m in (concurrent.futures, asyncio)}
)
_RUNNER_FILES = frozenset({os.path.join(os.path.dirname(_HERE), "registry.py")})


def _is_runner_frame(filename: str) -> bool:
    return filename in _RUNNER_FILES or os.path.dirname(filename) in _RUNNER_DIRS


# Why a handler was told to stop; decides the outcome that gets recorded.
CANCELLED, TIMED_OUT, LOST, RELEASED = "cancelled", "timed out", "lease lost", "released"


# --------------------------------------------------------------------------- outcomes


@dataclass(slots=True)
class Running:
    """A job this worker runs: its context, task and timeout (the slice of
    the worker's `Timeouts` it is armed in)."""

    job: Job
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    timeout_slice: int | None = None
    job_type: JobType[Any] | None = None  # its handler's, None: no handler here
    started_held: bool = False  # its "started" line is held (job_lines.HeldLines)
    # Loop time until which the job's lease surely holds: its claim's, then
    # each renewal's. A sync handler's thread checks it before it begins.
    lease_until: float = math.inf
    # Its task ran its first step: cancelling it now runs _execute's cleanup
    # (a task cancelled before that would skip all of it).
    began: bool = False


def token_of(job: Job) -> ClaimToken:
    """The fencing token of a job this worker claimed."""
    # Every record a claim returns carries its token (backends/base.py).
    assert job.token is not None, f"job {job.id} came from a claim without a token"
    return job.token


def success(job: Job, ctx: JobContext, result: Any) -> Outcome:
    now = time.time()
    if result is None:  # most handlers return nothing: no name for an error made
        encoded = "null"
    else:
        try:
            encoded = encode_json(result, f"the result of job {job.name!r}")
        except InvalidPayloadError as exc:
            # The same code would return the same value again: do not retry.
            return Outcome(job.id, token_of(job), OutcomeKind.FAILED, now, error=str(exc))
    kind = OutcomeKind.CANCELLED if ctx.stop_reason == CANCELLED else OutcomeKind.COMPLETED
    return Outcome(job.id, token_of(job), kind, now, result=encoded)


def stopped(job: Job, ctx: JobContext) -> Outcome | None:
    now = time.time()
    reason = ctx.stop_reason
    if reason == CANCELLED:
        return Outcome(job.id, token_of(job), OutcomeKind.CANCELLED, now, error="cancelled")
    if reason == RELEASED:
        return Outcome(job.id, token_of(job), OutcomeKind.QUEUED, now)
    return None  # LOST: another claim owns the job now; say nothing


def failure(
    job: Job,
    exc: BaseException,
    *,
    final: bool,
    job_type: JobType[Any] | None = None,
    timed_out: bool = False,
) -> Outcome:
    now = time.time()
    error = storable(f"{type(exc).__name__}: {exc}")
    tb = bounded_traceback(exc)
    kind, delay = OutcomeKind.FAILED, None
    if not final and job.attempts <= job.max_retries:
        try:
            delay = job_type.backoff(job.attempts) if job_type is not None else 1.0
            kind = OutcomeKind.SCHEDULED
        except BadBackoffError as bad:  # the job type's callable: fail, not retry never
            error = f"{error} (not retried: {bad})"
    return Outcome(
        job.id,
        token_of(job),
        kind,
        now,
        error=error,
        retry_in=delay,
        traceback=tb,
        timed_out=timed_out,
    )


def bounded_traceback(exc: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """The formatted traceback of `exc` (with its chained causes), at most
    `limit` UTF-8 bytes. A longer one keeps its innermost frames and the
    exception, cut between two frames, under a note saying how many earlier
    frames were left out. Kept on the job and written to the log, so a deep
    recursion must not store or log megabytes."""
    formatted = traceback.TracebackException.from_exception(exc)
    # The frames above the handler's (the worker's, the thread pool's) say
    # nothing about the error.
    stack = formatted.stack
    while len(stack) > 1 and _is_runner_frame(stack[0].filename):
        stack = traceback.StackSummary.from_list(stack[1:])
    formatted.stack = stack
    parts = [storable(part) for part in formatted.format()]
    sizes = [len(part.encode()) for part in parts]
    if sum(sizes) <= limit:
        return "".join(parts)
    header = "Traceback (most recent call last):\n"
    room = limit - len(header.encode()) - 120  # the note
    kept: list[str] = []
    # format_exception yields one element per frame (file line and source
    # line together), so stopping between elements cuts at a frame boundary.
    for part, size in zip(reversed(parts), reversed(sizes), strict=True):
        if size > room:
            if not kept:  # the exception line alone is too long: keep its start
                kept.append(part.encode()[:room].decode(errors="ignore") + "... (cut)\n")
            break
        kept.append(part)
        room -= size
    left_out = sum(1 for part in parts[: len(parts) - len(kept)] if part.startswith("  File "))
    note = f"  ... {left_out} earlier frame(s) left out to keep it under {limit} bytes ...\n"
    body = "".join(reversed(kept))
    if body.startswith(header):
        body = body[len(header) :]
    return header + note + body


def timed_out(job: Job) -> TimeoutError:
    return TimeoutError(f"timed out after {job.timeout:g} s")


def handed_back(job: Job) -> Outcome:
    """Back to the queue unfinished or unstarted: the attempt does not count."""
    return Outcome(job.id, token_of(job), OutcomeKind.QUEUED, time.time())


# --------------------------------------------------------------------------- acknowledging


@dataclass(slots=True)
class Batch:
    """Outcomes waiting to be sent, with the job each belongs to (for events)."""

    outcomes: list[Outcome] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)


class Acknowledgements:
    def __init__(
        self, backend: Backend, retention: Retention, events: EventBus, outage: Outage
    ) -> None:
        self._backend = backend
        self._outage = outage
        self._retention = retention
        self._events = events
        self.waiting = Batch()
        self.flusher: asyncio.Task[None] | None = None
        self.sent = 0  # outcomes answered by the backend, of any kind
        self.finished = 0  # completed, failed, retrying or cancelled
        self.handed_back = 0
        # Outcomes whose sending raised: the backend may have applied them
        # and only the reply was lost, so a refusal of their resend is checked.
        self._uncertain: set[int] = set()
        self.checks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.waiting.outcomes)

    def add(self, outcome: Outcome, job: Job) -> None:
        self.waiting.outcomes.append(outcome)
        self.waiting.jobs.append(job)

    def take(self) -> Batch:
        batch, self.waiting = self.waiting, Batch()
        return batch

    def put_back(self, batch: Batch) -> None:
        """Put a batch whose sending failed back in front: a lost acknowledgement
        would make its job run again."""
        self._uncertain.update(id(outcome) for outcome in batch.outcomes)
        self.waiting.outcomes[:0] = batch.outcomes
        self.waiting.jobs[:0] = batch.jobs

    def heartbeats(self) -> list[Heartbeat]:
        """Finished jobs whose outcome is not stored yet (the backend may be
        away) keep their lease too, or they would be run again."""
        return [Heartbeat(o.job_id, o.token) for o in self.waiting.outcomes]

    def acknowledged(self, batch: Batch, accepted: Sequence[bool]) -> None:
        self.sent += len(batch.outcomes)
        if not self._uncertain:  # no send has failed: every answer stands as given
            self._count_and_emit(batch, accepted)
            batch.outcomes, batch.jobs = [], []  # sent: never to be put back
            return
        answered = Batch()
        answers: list[bool] = []
        for outcome, job, ok in zip(batch.outcomes, batch.jobs, accepted, strict=True):
            if not ok and id(outcome) in self._uncertain:
                self._check_applied(outcome, job)
            else:
                answered.outcomes.append(outcome)
                answered.jobs.append(job)
                answers.append(ok)
            self._uncertain.discard(id(outcome))
        self._count_and_emit(answered, answers)
        batch.outcomes, batch.jobs = [], []  # sent: never to be put back

    def _count_and_emit(self, batch: Batch, accepted: Sequence[bool]) -> None:
        for outcome, ok in zip(batch.outcomes, accepted, strict=True):
            if ok and outcome.kind is OutcomeKind.QUEUED:
                self.handed_back += 1
            elif ok:
                self.finished += 1
        self._emit(batch, accepted)

    def _check_applied(self, outcome: Outcome, job: Job) -> None:
        """A resent outcome was refused: either an earlier send of it was
        applied and only its reply was lost, or the lease really was lost.
        The stored record tells: still this claim's (same start) and in the
        state the outcome gives means it was ours."""
        task = asyncio.get_running_loop().create_task(self._confirm(outcome, job))
        self.checks.add(task)
        task.add_done_callback(self.checks.discard)

    async def _confirm(self, outcome: Outcome, job: Job) -> None:
        try:
            stored = await self._backend.get(job.id)
        except Exception as exc:
            logger.warning("could not check job %s after a lost reply (%s)", job.id, exc)
            return
        applied = (
            stored is not None
            and stored.started_at is not None
            and stored.started_at == job.started_at
            and stored.state in _STATES_AFTER[outcome.kind]
        )
        self._count_and_emit(Batch([outcome], [job]), [applied])

    def flush(self) -> asyncio.Task[None]:
        """Start sending what waits, unless a flusher runs already; the flusher."""
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._flush())
        return self.flusher

    async def _flush(self) -> None:
        failures = 0
        while self.waiting.outcomes:
            batch = self.take()
            sent_at = self._outage.clock()
            try:
                accepted = await self._backend.finish(batch.outcomes, self._retention)
            except asyncio.CancelledError:
                self.put_back(batch)  # stop() gave up: these count as unacknowledged
                raise
            except Exception as exc:
                self.put_back(batch)
                failures += 1
                self._outage.failed(f"acknowledging {len(batch.outcomes)} job(s)", exc)
                await asyncio.sleep(min(0.1 * 2**failures, MAX_RETRY_PAUSE))
                continue
            failures = 0
            self._outage.answered(sent_at)
            self.acknowledged(batch, accepted)

    def log_unacknowledged(self) -> None:
        outcomes = self.waiting.outcomes
        if outcomes:
            logger.warning(
                "stopped with %d outcome(s) unacknowledged (the backend did not take them "
                "in time); these jobs come back when their lease expires: %s",
                len(outcomes),
                ", ".join(o.job_id for o in outcomes),
            )

    def _emit(self, batch: Batch, accepted: Sequence[bool]) -> None:
        events = self._events
        for outcome, job, ok in zip(batch.outcomes, batch.jobs, accepted, strict=True):
            if not ok:
                logger.warning(
                    "result of job %s attempt %d was refused: its lease was lost",
                    job.id,
                    job.attempts,
                )
                continue
            kind = outcome.kind
            # One traceback per failed attempt, with the line that says it.
            if kind is OutcomeKind.FAILED:
                logger.error(
                    "job %s %s failed for good: %s%s",
                    job.name,
                    job.id,
                    outcome.error,
                    _indented(outcome.traceback),
                    extra=job_fields(job, "failed", outcome.elapsed, outcome.error),
                )
            elif kind is OutcomeKind.SCHEDULED:
                logger.warning(
                    "job %s %s attempt %d failed (%s); retrying%s",
                    job.name,
                    job.id,
                    job.attempts,
                    outcome.error,
                    _indented(outcome.traceback),
                    extra=job_fields(job, "retrying", outcome.elapsed, outcome.error),
                )
            elif kind is OutcomeKind.CANCELLED:
                logger.info(
                    "job %s %s cancelled",
                    job.name,
                    job.id,
                    extra=job_fields(job, "cancelled", outcome.elapsed),
                )
            name = _EVENT_OF[kind]
            if name is not None and events.wants(name):
                # `duration`: seconds the handler ran (metrics read it).
                events.emit(name, _finished_view(job, outcome), duration=outcome.elapsed)


# Where an applied outcome leaves its job (a due retry is queued at once). A
# hand-back clears the start time, so it can never be confirmed this way: it
# sends no event anyway.
_STATES_AFTER: dict[OutcomeKind, frozenset[JobState]] = {
    OutcomeKind.COMPLETED: frozenset({JobState.COMPLETED}),
    OutcomeKind.FAILED: frozenset({JobState.FAILED}),
    OutcomeKind.SCHEDULED: frozenset({JobState.SCHEDULED, JobState.QUEUED}),
    OutcomeKind.CANCELLED: frozenset({JobState.CANCELLED}),
    OutcomeKind.QUEUED: frozenset(),
}

_EVENT_OF: dict[OutcomeKind, str | None] = {
    OutcomeKind.COMPLETED: "job.completed",
    OutcomeKind.FAILED: "job.failed",
    OutcomeKind.SCHEDULED: "job.retrying",
    OutcomeKind.CANCELLED: "job.cancelled",
    OutcomeKind.QUEUED: None,
}


def _indented(tb: str | None) -> str:
    """A traceback to end a log line with (nothing when there is none)."""
    return "" if not tb else "\n" + tb.rstrip("\n")


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
        result = decode_json(outcome.result)
    final = outcome.kind in (OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.CANCELLED)
    failed = outcome.kind in (OutcomeKind.FAILED, OutcomeKind.SCHEDULED)
    completed = outcome.kind is OutcomeKind.COMPLETED
    # The attempt's history entry, as the backend adds it (minus a stall's).
    error = None if completed or outcome.kind is OutcomeKind.QUEUED else outcome.error
    entry = attempt_entry(
        job.attempts,
        job.started_at,
        utc(outcome.at),
        attempt_outcome(outcome.kind, timed_out=outcome.timed_out).value,
        error,
    )
    run_at = outcome.run_at
    if outcome.retry_in is not None:  # as the backend reckons it, give or take the skew
        run_at = outcome.at + outcome.retry_in
    return replace(
        job,
        state=state,
        result=result,
        error=outcome.error,
        # Like the error: a failure's own, none after a success, else as it was.
        traceback=outcome.traceback if failed else None if completed else job.traceback,
        finished_at=utc(outcome.at) if final else None,
        history=[*job.history[-(HISTORY_LIMIT - 1) :], entry],
        run_at=utc(run_at) if run_at is not None else job.run_at,
    )
