"""An outage of the backend is one ERROR line and one "reachable again" line
per worker, not one line per failed call of each of its loops (claims,
heartbeats, acknowledgements, lease recovery, presence, the scheduler)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from conveyor import Conveyor, JobState

from .conftest import needs
from .faults import BackendFaults
from .helpers import WAIT, eventually, wait_event

pytestmark = needs("lookup")


async def test_an_outage_is_logged_once_and_its_end_once(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    faults = BackendFaults(app.backend)
    running = asyncio.Event()
    release = asyncio.Event()

    @app.job("slow", timeout=None)
    async def slow(payload: Any) -> str:
        running.set()
        await release.wait()
        return "done"

    job = await app.enqueue("slow", {})
    # Every loop of the worker runs several times during the outage.
    w = worker(app, heartbeat_interval=0.05, recover_interval=0.05, scheduler_interval=0.05)
    async with w:
        await wait_event(running)
        caplog.clear()
        faults.break_()
        release.set()  # its acknowledgement fails too
        calls = len(faults.calls)
        await eventually(lambda: len(faults.calls) > calls + 40, message="calls failing")
        faults.heal()
        done = await app.wait(job.id, timeout=WAIT)
        assert done.state is JobState.COMPLETED
        await eventually(
            lambda: any("reachable again" in r.getMessage() for r in caplog.records),
            message="the end of the outage logged",
        )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    again = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(errors) == 1 and "unavailable" in errors[0], errors
    assert len(again) == 1, again
