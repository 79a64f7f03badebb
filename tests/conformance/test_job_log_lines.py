"""At INFO a worker says which job it starts (name, id, attempt) and how long
a completed one took; failures are logged with their error at WARNING (a
retry) or ERROR (final). Nothing per job is logged above DEBUG otherwise."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from conveyor import Conveyor, JobContext, JobState, Permanent

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


async def test_with_conveyors_own_handler_each_job_finds_its_started_line_written(
    app: Conveyor, worker
) -> None:
    """With only conveyor's text handler on the worker's logger (no record is
    made: the lines are written a batch at a time), a handler's "started"
    line is out before it runs, and each job's lines are all written, in
    order, by the time the worker has stopped."""
    import io

    from conveyor.logs import LineHandler, PlainFormatter

    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(PlainFormatter())
    worker_logger = logging.getLogger("conveyor.worker")
    saved = (worker_logger.handlers[:], worker_logger.level, worker_logger.propagate)
    worker_logger.setLevel(logging.INFO)
    worker_logger.propagate = False
    seen: list[bool] = []

    @app.job("greet")
    async def greet(payload: Any, ctx: JobContext) -> None:
        seen.append(f"processing job greet {ctx.job_id} " in stream.getvalue())

    try:
        # pytest adds its capture handler to a non-propagating logger at the
        # start of each test: only conveyor's own handler stays.
        worker_logger.handlers[:] = [handler]
        ids: list[str] = []
        for _ in range(3):
            job = await app.enqueue("greet", {})
            ids.append(job.id)
        async with worker(app, concurrency=1):
            for job_id in ids:
                await app.wait(job_id, timeout=WAIT)
    finally:
        worker_logger.handlers[:], worker_logger.level, worker_logger.propagate = saved
    text = stream.getvalue()
    for job_id in ids:
        assert f"processing job greet {job_id} " in text
        assert text.index(f"processing job greet {job_id} ") < text.index(
            f"job greet {job_id} completed in "
        )
    assert seen == [True, True, True]
