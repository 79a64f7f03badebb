"""A sync handler that ignores its timeout keeps its thread: Python cannot
stop it. The worker abandons that thread, and no other job may pay for it:
the next sync job gets a thread of its own and its full timeout, abandoned
threads show in the worker's stats and in a warning naming the job, and past
`max_abandoned_threads` each one still busy takes a slot, so the worker
claims no job it could not run."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from conveyor import Conveyor, JobState

from .conftest import needs
from .helpers import WAIT, eventually, wait_state

pytestmark = needs("lookup")


def _warnings_naming(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)
    ]


async def test_hung_sync_handler_does_not_starve_the_next_sync_job(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    @app.job("hang", timeout=0.2, retries=0)
    def hang(payload: Any) -> None:
        release.wait(WAIT)  # ignores ctx.is_cancelled() on purpose

    @app.job("quick", timeout=1.0, retries=0)
    def quick(payload: Any) -> str:
        return "ran"

    hung = await app.enqueue("hang", {})
    next_job = await app.enqueue("quick", {})
    w = worker(app, concurrency=1)
    await w.start()
    try:
        done = await app.wait(hung.id, timeout=WAIT)
        assert done.state is JobState.FAILED and "timed out" in (done.error or "")
        # The hung thread still holds on; the next job must run all the same.
        after = await app.wait(next_job.id, timeout=WAIT)
        assert after.state is JobState.COMPLETED, after.error
        assert after.result == "ran"
        assert w.stats()["abandoned_threads"] == 1
        assert _warnings_naming(caplog, "hang", hung.id, "abandon")
        release.set()
        await eventually(lambda: w.stats()["abandoned_threads"] == 0, message="thread back")
    finally:
        release.set()
        await w.stop()
    assert w.stats()["finished"] == 2


async def test_worker_claims_nothing_while_abandoned_threads_fill_the_pool(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    @app.job("hang", timeout=0.1, retries=0)
    def hang(payload: Any) -> None:
        release.wait(WAIT)

    @app.job("later", timeout=None)
    async def later(payload: Any) -> str:
        return "ran"

    first, second = [await app.enqueue("hang", n) for n in range(2)]
    waiting = await app.enqueue("later", {})
    w = worker(app, concurrency=1, max_abandoned_threads=1)
    await w.start()
    try:
        await wait_state(app, first.id, JobState.FAILED)
        await wait_state(app, second.id, JobState.FAILED)
        await eventually(
            lambda: _warnings_naming(caplog, "max_abandoned_threads"),
            message="the warning that the worker stops claiming",
        )
        assert w.stats()["abandoned_threads"] == 2
        # The pool (1 slot + 1 tolerated) is full of hung threads: not claimed.
        assert (await app.get_job(waiting.id)).state is JobState.QUEUED  # type: ignore[union-attr]
        release.set()
        done = await app.wait(waiting.id, timeout=WAIT)
        assert done.state is JobState.COMPLETED
    finally:
        release.set()
        await w.stop()
