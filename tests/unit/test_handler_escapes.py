"""A handler that raises what is not an ordinary exception (CancelledError
from its own code, GeneratorExit, SystemExit, KeyboardInterrupt) or lets
StopIteration escape a sync handler (which a future cannot carry) fails its
attempt like any error: it must not leave its job "running" with no outcome
(recovered later as a stall, its error lost), hang its slot, or end the
worker's event loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor import Conveyor, InvalidPayloadError, JobState

ESCAPES: list[type[BaseException]] = [
    asyncio.CancelledError,
    GeneratorExit,
    SystemExit,
    KeyboardInterrupt,
    StopIteration,
]


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("escape", ESCAPES, ids=lambda e: e.__name__)
async def test_a_handler_raising_a_base_exception_fails_its_attempt(
    kind: str, escape: type[BaseException]
) -> None:
    app = Conveyor("memory://")

    if kind == "async":

        @app.job("odd", retries=0, timeout=None)
        async def odd_async(payload: Any) -> None:
            raise escape("from the handler")

    else:

        @app.job("odd", retries=0, timeout=None)
        def odd_sync(payload: Any) -> None:
            raise escape("from the handler")

    @app.job("fine")
    async def fine(payload: Any) -> str:
        return "ok"

    async with app:
        odd = await app.enqueue("odd", {})
        after = await app.enqueue("fine", {})
        ran = await asyncio.wait_for(app.drain(), 20)
        by_id = {job.id: job for job in ran}
        assert by_id[odd.id].state is JobState.FAILED, by_id[odd.id]
        assert escape.__name__ in (by_id[odd.id].error or "")
        assert by_id[after.id].state is JobState.COMPLETED  # the worker went on
        stored = await app.get_job(odd.id)
        assert stored is not None and stored.state is JobState.FAILED


async def test_a_cancelled_sync_handler_that_ignores_it_is_still_timed_out() -> None:
    """Cancelling a running sync job tells its handler (ctx.is_cancelled());
    one that does not look must still be stopped at its timeout (its thread
    abandoned, the job cancelled), not hold its slot and stay running."""
    app = Conveyor("memory://")
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    @app.job("deaf", timeout=1.0)
    def deaf(payload: Any) -> None:
        loop.call_soon_threadsafe(started.set)
        time.sleep(4)  # never looks at ctx.is_cancelled()

    async with app, app.worker(heartbeat_interval=0.1, shutdown_timeout=0.5):
        job = await app.enqueue("deaf", {})
        await asyncio.wait_for(started.wait(), 10)
        await app.cancel(job.id)
        began = time.monotonic()
        done = await app.wait(job.id, timeout=10)
        assert done.state is JobState.CANCELLED
        assert time.monotonic() - began < 2.5, "the cancel switched the job's timeout off"


async def test_prefetched_jobs_go_back_when_abandoned_threads_take_every_slot() -> None:
    """A worker whose every slot is taken by abandoned threads (hung sync
    handlers past max_abandoned_threads) runs nothing until they return,
    maybe never: the jobs it prefetched go back to the queue for others,
    rather than wait there with their leases renewed."""
    app = Conveyor("memory://")
    loop = asyncio.get_running_loop()
    hung = asyncio.Event()

    @app.job("hang", timeout=0.3, retries=0)
    def hang(payload: Any) -> None:
        loop.call_soon_threadsafe(hung.set)
        time.sleep(4)

    @app.job("quick")
    async def quick(payload: Any) -> None:
        return None

    async with app:
        await app.enqueue("hang", {})
        quick_ones = [await app.enqueue("quick", {"n": n}) for n in range(2)]
        stuck = app.worker(concurrency=1, prefetch=2, max_abandoned_threads=0, shutdown_timeout=0.2)
        async with stuck:
            await asyncio.wait_for(hung.wait(), 10)
            async with app.worker(concurrency=2):
                for job in quick_ones:
                    done = await app.wait(job.id, timeout=2.5)
                    assert done.state is JobState.COMPLETED


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_job_told_to_stop_before_its_task_first_ran_still_ends(kind: str) -> None:
    """A heartbeat may answer "cancelled" for a job whose task was created
    but has not run a step yet (a backend that answers without yielding):
    cancelling that task then would skip all of `_execute`, its `finally`
    too, leaving the job in the worker's running set for ever (a slot lost,
    a drain that never ends) and no outcome sent."""
    app = Conveyor("memory://")
    ran: list[str] = []

    if kind == "async":

        @app.job("j")
        async def j_async(payload: Any) -> None:
            ran.append("ran")

    else:

        @app.job("j")
        def j_sync(payload: Any) -> None:
            ran.append("ran")

    async with app, app.worker(concurrency=1, poll_interval=60) as worker:
        job = await app.enqueue("j", {})
        (claimed,) = await app.backend.claim(["default"], 1, 30.0)
        await app.cancel(job.id)  # asked while it runs: the heartbeat says so
        worker._claims.claimed([claimed], worker._clock())
        worker._start_job(claimed)  # its task is made, not yet run
        running = worker._running[claimed.id]
        worker._tell_stop(running, "cancelled")
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert claimed.id not in worker._running, "the job stayed in the running set"
        done = await app.wait(job.id, timeout=5)
        assert done.state is JobState.CANCELLED and ran == []


async def test_an_error_holding_a_lone_surrogate_fails_the_job() -> None:
    """An error message or traceback with a lone surrogate (a file name
    decoded from bytes that are not UTF-8) is recorded with it escaped;
    encoding it raised in the worker, and the job stayed running."""
    app = Conveyor("memory://")

    @app.job("bad", retries=0)
    async def bad(payload: Any) -> None:
        raise ValueError("file report-\udcff.csv is broken")

    async with app:
        job = await app.enqueue("bad", {})
        (done,) = await asyncio.wait_for(app.drain(), 20)
        assert done.id == job.id and done.state is JobState.FAILED
        assert "report-\\udcff.csv" in (done.error or "")
        assert "report-\\udcff.csv" in (done.traceback or "")


async def test_a_result_or_log_line_holding_a_lone_surrogate_does_not_wedge_the_worker() -> None:
    """A log line's text is kept escaped; a result (data, not a message) with
    a surrogate fails its job saying so. PostgreSQL refused the JSON escape
    of a lone surrogate, so such an outcome was sent again and again, for
    ever, holding every outcome of its batch."""
    app = Conveyor("memory://")

    @app.job("logs", retries=0)
    async def logs(payload: Any, ctx: Any) -> str:
        ctx.log("saw report-\udcff.csv", file="report-\udcff.csv")
        return "ok"

    @app.job("result", retries=0)
    async def result(payload: Any) -> str:
        return "report-\udcff.csv"

    async with app:
        logged = await app.enqueue("logs", {})
        returned = await app.enqueue("result", {})
        ran = {job.id: job for job in await asyncio.wait_for(app.drain(), 20)}
        assert ran[logged.id].state is JobState.COMPLETED
        line = ran[logged.id].logs[0]
        assert line["msg"] == "saw report-\\udcff.csv" and line["file"] == "report-\\udcff.csv"
        assert ran[returned.id].state is JobState.FAILED
        assert "surrogate" in (ran[returned.id].error or "")
    producer = Conveyor("memory://")
    producer.declare("anything")
    with pytest.raises(InvalidPayloadError, match="surrogate"):
        await producer.enqueue("anything", {"file": "report-\udcff.csv"})
