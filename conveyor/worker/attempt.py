"""One attempt of a claimed job, from its handler's call to its outcome.

Shared by the worker (core.py, which adds its slots, backlog and batched
acknowledgements around it) and by anything that runs a single job a
service handed it (the Cloud Tasks endpoint, conveyor/gcp): how a raised
exception, a timeout or a stop request becomes the `Outcome` to record is
decided here only, so both record the same thing for the same failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Outcome
from conveyor.context import JobContext
from conveyor.job import InvalidPayloadError, Job, Permanent
from conveyor.worker.acks import (
    CANCELLED,
    TIMED_OUT,
    failure,
    handed_back,
    stopped,
    success,
    timed_out,
)
from conveyor.worker.threads import HandlerThreads, LeaseLapsed, awaited_handler

if TYPE_CHECKING:
    from conveyor.registry import JobType


def outcome_of_error(
    job: Job, ctx: JobContext, job_type: JobType[Any] | None, exc: BaseException
) -> Outcome | None:
    """The outcome of an attempt that raised `exc` (a CancelledError when the
    runner cancelled it). None: nothing to record (the lease was lost, or a
    cancel came from outside, which the caller re-raises)."""
    if isinstance(exc, asyncio.CancelledError):
        if ctx.stop_reason == TIMED_OUT:
            return failure(job, timed_out(job), final=False, job_type=job_type, timed_out=True)
        return stopped(job, ctx)
    if isinstance(exc, Permanent | InvalidPayloadError):
        # A payload that no longer fits its model fails the same way on
        # every attempt: retrying would only repeat it.
        return failure(job, exc, final=True)
    if ctx.stop_reason == TIMED_OUT:
        return failure(job, timed_out(job), final=False, job_type=job_type, timed_out=True)
    if ctx.stop_reason is not None:
        return stopped(job, ctx)
    return failure(job, exc, final=False, job_type=job_type)


async def run_attempt(
    job: Job,
    job_type: JobType[Any],
    ctx: JobContext,
    threads: HandlerThreads,
    may_begin: Callable[[], bool],
    on_task: Callable[[asyncio.Task[Any]], None] | None = None,
) -> Outcome | None:
    """Run one claimed job's handler within the job's timeout, here, and
    return its outcome (None as for `outcome_of_error`). A sync handler runs
    on `threads`, its timeout counted from its start in its thread. The
    handler begins only if `may_begin()` (the lease still holds) when it is
    about to, else the job is handed back. `on_task` gets the handler's
    task, for a caller that may stop it (after `ctx.mark_stopped(reason)`)
    on a cancel or a lost lease."""
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def expire() -> None:
        if call.done():
            return
        if ctx.stop_reason is None:
            ctx.mark_stopped(TIMED_OUT)
            call.cancel()
        elif ctx.stop_reason == CANCELLED:  # told to stop, and did not look: abandoned
            call.cancel()

    def arm() -> None:
        nonlocal timer
        if job.timeout is not None and not call.done():
            timer = loop.call_at(loop.time() + job.timeout, expire)

    async def invoke() -> Any:
        payload = job_type.decode_payload(job.payload)
        if job_type.is_async:
            if not may_begin():
                raise LeaseLapsed
            return await awaited_handler(job_type.call(payload, ctx), ctx)
        return await threads.run(
            ctx, job_type.call, payload, ctx, may_begin=may_begin, on_start=arm
        )

    call = loop.create_task(invoke())
    if job_type.is_async:
        arm()
    if on_task is not None:
        on_task(call)
    try:
        result = await asyncio.shield(call)
    except asyncio.CancelledError as exc:
        if not call.done():  # our caller was cancelled, not the handler
            call.cancel()
            raise
        outcome = outcome_of_error(job, ctx, job_type, exc)
        if outcome is None and ctx.stop_reason is None:
            raise
        return outcome
    except LeaseLapsed:
        return handed_back(job)  # fenced by the claim's token
    except Exception as exc:
        return outcome_of_error(job, ctx, job_type, exc)
    finally:
        if timer is not None:
            timer.cancel()
    return success(job, ctx, result)
