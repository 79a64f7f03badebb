"""stop() ends within the shutdown timeout plus a short grace, whatever the
backend does: when it is gone, or stops answering, the worker gives up on
what it could not acknowledge, says which jobs those were (they come back
through lease expiry), and returns."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.worker import STOP_GRACE

from .faults import CLAIM_CALLS, BackendFaults
from .helpers import eventually, wait_event

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
