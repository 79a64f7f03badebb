"""`await app.drain(queues=None)`: every due job run to completion in the
calling task by an in-process burst worker, and what ran returned (issue 8,
point 7). The fake clock of `conveyor.testing` moves the time of memory:// and
sqlite:// backends; on a backend with a server clock it is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import (
    Backoff,
    Conveyor,
    InvalidOptionError,
    JobState,
    NotSupportedError,
    Permanent,
    testing,
)

from .conftest import needs
from .helpers import WAIT

pytestmark = needs("lookup")


class Boom(Exception):
    pass


def fake_clock_or_skip(app: Conveyor) -> testing.FakeClock:
    try:
        return testing.FakeClock(app)
    except NotSupportedError as exc:
        pytest.skip(f"no fake clock on this backend: {exc}")


async def test_nothing_due_returns_empty_at_once(app: Conveyor) -> None:
    @app.job("noop")
    async def noop(payload: Any) -> None: ...

    async with asyncio.timeout(WAIT):
        assert await app.drain() == []


async def test_jobs_enqueued_by_jobs_run_in_the_same_drain(app: Conveyor) -> None:
    ran: list[str] = []

    @app.job("child")
    async def child(payload: dict[str, int]) -> int:
        ran.append(f"child {payload['n']}")
        return payload["n"] * 10

    @app.job("parent")
    async def parent(payload: dict[str, int]) -> str:
        ran.append("parent")
        for n in range(payload["children"]):
            await app.enqueue("child", {"n": n})
        return "spawned"

    job = await app.enqueue("parent", {"children": 3})
    async with asyncio.timeout(WAIT):
        done = await app.drain()
    assert ran == ["parent", "child 0", "child 1", "child 2"]
    assert [(j.name, j.state, j.result) for j in done] == [
        ("parent", JobState.COMPLETED, "spawned"),
        ("child", JobState.COMPLETED, 0),
        ("child", JobState.COMPLETED, 10),
        ("child", JobState.COMPLETED, 20),
    ]
    assert done[0].id == job.id
    assert await app.drain() == []  # nothing left


async def test_a_retry_already_due_runs_in_the_same_drain(app: Conveyor) -> None:
    @app.job("flaky", retries=3, backoff=0)
    async def flaky(payload: Any, ctx: Any) -> int:
        if ctx.attempt < 3:
            raise Boom(f"attempt {ctx.attempt}")
        return int(ctx.attempt)

    retrying: list[int] = []
    app.on("job.retrying", lambda event: retrying.append(event.job.attempts))
    job = await app.enqueue("flaky", {})
    async with asyncio.timeout(WAIT):
        [done] = await app.drain()
    assert done.id == job.id
    assert (done.state, done.attempts, done.result) == (JobState.COMPLETED, 3, 3)
    assert retrying == [1, 2]  # the worker's own events fired


async def test_a_job_that_fails_for_good_comes_back_failed(app: Conveyor) -> None:
    @app.job("doomed", retries=5)
    async def doomed(payload: Any) -> None:
        raise Permanent("no such user")

    await app.enqueue("doomed", {})
    async with asyncio.timeout(WAIT):
        [done] = await app.drain()
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert "no such user" in (done.error or "")


async def test_a_retry_with_a_backoff_still_to_run_is_left_scheduled(app: Conveyor) -> None:
    @app.job("flaky", retries=1, backoff=Backoff.fixed(3600))
    async def flaky(payload: Any) -> None:
        raise Boom("down")

    await app.enqueue("flaky", {})
    async with asyncio.timeout(WAIT):
        [done] = await app.drain()
    assert (done.state, done.attempts) == (JobState.SCHEDULED, 1)
    assert await app.drain() == []  # its backoff is an hour away


async def test_drain_serves_only_the_queues_given(app: Conveyor) -> None:
    @app.job("mail", queue="emails")
    async def mail(payload: Any) -> str:
        return "mailed"

    @app.job("report", queue="reports")
    async def report(payload: Any) -> str:
        return "built"

    mailed = await app.enqueue("mail", {})
    built = await app.enqueue("report", {})
    async with asyncio.timeout(WAIT):
        assert [j.id for j in await app.drain(queues=["emails"])] == [mailed.id]
        assert [j.id for j in await app.drain()] == [built.id]


async def test_delayed_jobs_wait_for_the_fake_clock(app: Conveyor) -> None:
    clock = fake_clock_or_skip(app)
    with clock:

        @app.job("remind")
        async def remind(payload: Any) -> str:
            return "reminded"

        job = await app.enqueue("remind", {}, delay=60)
        async with asyncio.timeout(WAIT):
            assert await app.drain() == []
            clock.advance(59)
            assert await app.drain() == []
            assert (await app.get_job(job.id)).state is JobState.SCHEDULED
            clock.advance(1)
            [done] = await app.drain()
    assert (done.id, done.state, done.result) == (job.id, JobState.COMPLETED, "reminded")


async def test_the_fake_clock_moves_retries_along(app: Conveyor) -> None:
    clock = fake_clock_or_skip(app)
    with clock:

        @app.job("flaky", retries=2, backoff=Backoff.fixed(30))
        async def flaky(payload: Any, ctx: Any) -> int:
            if ctx.attempt == 1:
                raise Boom("first try")
            return int(ctx.attempt)

        await app.enqueue("flaky", {})
        async with asyncio.timeout(WAIT):
            [first] = await app.drain()
            assert first.state is JobState.SCHEDULED
            assert first.run_at is not None
            assert first.run_at.timestamp() == pytest.approx(clock.time() + 30, abs=0.01)
            clock.advance(30)
            [done] = await app.drain()
    assert (done.state, done.attempts) == (JobState.COMPLETED, 2)


async def test_fail_next_makes_the_next_attempt_fail(app: Conveyor) -> None:
    calls: list[int] = []

    @app.job("welcome", retries=1, backoff=0)
    def welcome(payload: Any, ctx: Any) -> str:  # a sync handler, in the thread pool
        calls.append(ctx.attempt)
        return "sent"

    testing.fail_next(app, "welcome", exc=Boom("smtp down"))
    errors: list[str] = []
    app.on("job.retrying", lambda event: errors.append(event.job.error or ""))
    await app.enqueue("welcome", {})
    async with asyncio.timeout(WAIT):
        [done] = await app.drain()
    assert (done.state, done.attempts, done.result) == (JobState.COMPLETED, 2, "sent")
    assert calls == [2]  # the failed attempt never reached the handler
    assert errors == ["Boom: smtp down"]

    testing.fail_next(app, "welcome", exc=Permanent("bounced"))
    await app.enqueue("welcome", {})
    async with asyncio.timeout(WAIT):
        [failed] = await app.drain()
    assert (failed.state, failed.attempts) == (JobState.FAILED, 1)
    assert "bounced" in (failed.error or "")


async def test_drain_sync_runs_on_the_helper_loop(app: Conveyor) -> None:
    @app.job("echo")
    async def echo(payload: dict[str, int]) -> int:
        return payload["n"]

    await app.enqueue("echo", {"n": 7})
    done = await asyncio.to_thread(app.drain_sync)
    assert [(j.state, j.result) for j in done] == [(JobState.COMPLETED, 7)]


async def test_the_fake_clock_brings_recurring_schedules_due(app: Conveyor) -> None:
    clock = fake_clock_or_skip(app)
    if not app.backend.capabilities.recurring:
        pytest.skip("this backend stores no recurring schedules")
    with clock:

        @app.job("cleanup")
        async def cleanup(payload: dict[str, str]) -> str:
            return payload["what"]

        await app.recurring("hourly-cleanup", "cleanup", {"what": "tmp"}, every="1 hour")
        async with asyncio.timeout(WAIT):
            assert await app.drain() == []
            clock.advance(3599)
            assert await app.drain() == []
            clock.advance(1)
            [done] = await app.drain()
            assert (done.name, done.state, done.result) == ("cleanup", JobState.COMPLETED, "tmp")
            assert await app.drain() == []  # the next tick is an hour on


async def test_drain_refuses_a_string_for_queues(app: Conveyor) -> None:
    with pytest.raises(InvalidOptionError, match="list of names"):
        await app.drain(queues="emails")  # type: ignore[arg-type]
