"""stop() ends within the shutdown timeout plus a short grace, whatever the
backend does: when it is gone, or stops answering, the worker gives up on
what it could not acknowledge, says which jobs those were (they come back
through lease expiry), and returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.worker import STOP_GRACE

from .conftest import needs
from .faults import CLAIM_CALLS, BackendFaults
from .helpers import eventually, wait_event

pytestmark = needs("lookup")

SHUTDOWN = 0.5
# Slack over the promised bound for a slow CI box; the point is that stop()
# returns at all (before the fix it waited forever).
BOUND = SHUTDOWN + STOP_GRACE + 5.0


def _left_over(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and job_id in r.getMessage()
        and "unacknowledged" in r.getMessage()
    ]


@pytest.mark.parametrize("fault", ["unreachable", "not answering"])
async def test_stop_gives_up_on_acknowledgements_the_backend_never_takes(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    faults = BackendFaults(app.backend)
    finished = asyncio.Event()

    @app.job("quick", timeout=None)
    async def quick(payload: Any) -> str:
        # The backend goes away the moment the job is done.
        if fault == "unreachable":
            faults.break_()
        else:
            faults.hang()
        finished.set()
        return "done"

    job = await app.enqueue("quick", {})
    w = worker(app, shutdown_timeout=SHUTDOWN)
    await w.start()
    await wait_event(finished)
    started = time.monotonic()
    async with asyncio.timeout(BOUND):
        await w.stop()
    assert time.monotonic() - started < BOUND
    faults.heal()
    assert _left_over(caplog, job.id), [r.getMessage() for r in caplog.records]
    assert w.stats()["unacknowledged"] == 1
    # Never acknowledged: still running, until its lease runs out.
    stored = await app.get_job(job.id)
    assert stored is not None and stored.state is JobState.RUNNING


async def test_stop_is_bounded_while_a_claim_hangs(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    """The claim loop's call in flight (a claim, a blocking claim, a wait for
    work) never returns: stop() stops waiting for it in time."""
    faults = BackendFaults(app.backend)
    w = worker(app, shutdown_timeout=SHUTDOWN)
    await w.start()
    before = len(faults.calls)
    faults.hang(*CLAIM_CALLS)
    # The idle claim loop comes back to claim (it polls), and hangs there.
    await eventually(
        lambda: set(faults.calls[before:]) & set(CLAIM_CALLS), message="a claim in flight"
    )
    async with asyncio.timeout(BOUND):
        await w.stop()
    faults.heal()


async def test_job_handed_back_at_stop_sends_no_outcome_of_its_own(app: Conveyor, worker) -> None:
    """A handler that ignores its cancellation outlives stop(), which handed
    its job back. When it returns at last, its result must not be sent: the
    job may already run elsewhere (here: on a second worker)."""
    first_started = asyncio.Event()
    second_started = asyncio.Event()
    zombie_may_return = asyncio.Event()
    second_may_return = asyncio.Event()
    zombie_returned = asyncio.Event()
    runs = 0

    @app.job("stubborn", timeout=None)
    async def stubborn(payload: Any) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            first_started.set()
            while not zombie_may_return.is_set():
                with contextlib.suppress(asyncio.CancelledError):  # ignores every cancel
                    await zombie_may_return.wait()
            zombie_returned.set()
            return "zombie"
        second_started.set()
        await second_may_return.wait()
        return "second"

    job = await app.enqueue("stubborn", {})
    first = worker(app, shutdown_timeout=0.1)
    await first.start()
    await wait_event(first_started)
    await first.stop()
    back = await app.get_job(job.id)
    assert back is not None and back.state is JobState.QUEUED
    async with worker(app) as second:
        await wait_event(second_started)
        zombie_may_return.set()
        await wait_event(zombie_returned)
        second_may_return.set()
        done = await app.wait(job.id, timeout=10)
        # The backend shows the completion once it commits, which can be
        # before the worker has its reply and counts it.
        await eventually(lambda: second.stats()["finished"] == 1, message="the second's count")
    assert done.state is JobState.COMPLETED
    assert done.result == "second"
    assert first.stats()["finished"] == 0
    assert first.stats()["handed_back"] == 1
