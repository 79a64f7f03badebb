"""At INFO a worker says which job it starts (name, id, attempt) and how long
a completed one took; failures are logged with their error at WARNING (a
retry) or ERROR (final). Nothing per job is logged above DEBUG otherwise."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from conveyor import Conveyor, JobState, Permanent

from .conftest import needs
from .helpers import WAIT

pytestmark = needs("lookup")


async def test_each_job_is_logged_with_name_id_attempt_and_duration(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "conveyor.worker")

    @app.job("greet")
    async def greet(payload: Any) -> str:
        return "hi"

    @app.job("doomed", retries=0)
    async def doomed(payload: Any) -> None:
        raise Permanent("no such address")

    ok = await app.enqueue("greet", {})
    bad = await app.enqueue("doomed", {})
    async with worker(app):
        assert (await app.wait(ok.id, timeout=WAIT)).state is JobState.COMPLETED
        assert (await app.wait(bad.id, timeout=WAIT)).state is JobState.FAILED
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, f"processing job greet {ok.id} (attempt 1)") in lines
    assert any(
        level == logging.INFO and msg.startswith(f"job greet {ok.id} completed in ")
        for level, msg in lines
    ), lines
    assert any(
        level == logging.ERROR and bad.id in msg and "no such address" in msg
        for level, msg in lines
    ), lines


async def test_nothing_per_job_at_warning_level(
    app: Conveyor, worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "conveyor.worker")

    @app.job("greet")
    async def greet(payload: Any) -> str:
        return "hi"

    ok = await app.enqueue("greet", {})
    async with worker(app):
        await app.wait(ok.id, timeout=WAIT)
    assert not [r for r in caplog.records if ok.id in r.getMessage()]
