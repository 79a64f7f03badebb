"""Pausing a queue (issue 11, point 2): `app.pause(queue)` makes every worker
stop claiming from it within its pause check interval, saying so once in its
log; enqueues go on; `app.resume(queue)` brings the queue back. The paused
set lives in the backend, so a second app (another process) sees it. A bare
broker has nowhere to keep it and says so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, NotSupportedError, Worker

from .conftest import MakeApp, needs
from .helpers import WAIT, eventually
from .test_rolling_deploy import same_store

QUEUES = ["default", "emails"]
CHECK = 0.05  # the workers' pause check interval here
# Long enough for a worker to have claimed a job many times over had it not
# been paused: many check intervals and poll intervals.
SETTLE = 0.6


def register(app: Conveyor, ran: list[Any]) -> None:
    @app.job("send", queue="emails", retries=0)
    async def send(payload: Any) -> None:
        ran.append(("send", payload))

    @app.job("other", retries=0)
    async def other(payload: Any) -> None:
        ran.append(("other", payload))


def lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


@needs("pause")
async def test_pause_resume_and_the_paused_set_seen_from_another_app(
    make_app: MakeApp, backend_name: str
) -> None:
    app = await make_app()
    other = await same_store(make_app, app, backend_name)
    assert await app.paused() == []
    assert await app.pause("emails") is True
    assert await app.pause("emails") is False  # already paused
    assert await asyncio.to_thread(app.pause_sync, "reports") is True
    assert await other.paused() == ["emails", "reports"]
    assert await asyncio.to_thread(other.paused_sync) == ["emails", "reports"]
    assert await other.resume("reports") is True
    assert await other.resume("reports") is False  # not paused
    assert await asyncio.to_thread(app.resume_sync, "emails") is True
    assert await app.paused() == []


@needs("pause")
async def test_a_worker_claims_nothing_from_a_paused_queue_until_it_is_resumed(
    app: Conveyor, worker: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    ran: list[Any] = []
    register(app, ran)
    await app.pause("emails")
    held = await app.enqueue("send", 1)  # enqueues go on while paused
    async with worker(app, queues=QUEUES, pause_check_interval=CHECK):
        done = await app.enqueue("other", 1)
        await eventually(lambda: ("other", 1) in ran, message="the unpaused queue's job")
        await asyncio.sleep(SETTLE)
        assert ("send", 1) not in ran
        assert lines(caplog, "queue emails paused; not claiming from it") == 1
        assert await app.resume("emails") is True
        await eventually(lambda: ("send", 1) in ran, message="the resumed queue's job")
        assert lines(caplog, "queue emails resumed; claiming from it again") == 1
    assert lines(caplog, "queue emails paused") == 1  # said once, not per claim
    assert ran.count(("send", 1)) == 1
    assert held.id != done.id


@needs("pause")
async def test_pausing_reaches_a_running_worker_within_its_check_interval(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    ran: list[Any] = []
    app = await make_app()
    admin = await same_store(make_app, app, backend_name)  # as another process would
    register(app, ran)
    async with worker(app, queues=QUEUES, pause_check_interval=CHECK) as running:
        await app.enqueue("send", "before")
        await eventually(lambda: ("send", "before") in ran, message="a job before the pause")
        await admin.pause("emails")
        # Every queue of this worker but one is served; with both paused it
        # waits without claiming at all, and wakes when one is resumed.
        await admin.pause("default")
        await eventually(
            lambda: running.stats()["running"] == 0 and not running._pauses.active,
            message="the worker to see both pauses",
        )
        await app.enqueue("send", "while paused")
        await app.enqueue("other", "while paused")
        await asyncio.sleep(SETTLE)
        assert ran == [("send", "before")]
        await admin.resume("default")
        await eventually(lambda: ("other", "while paused") in ran, message="default resumed")
        await asyncio.sleep(SETTLE)
        assert ("send", "while paused") not in ran
        await admin.resume("emails")
        await eventually(lambda: ("send", "while paused") in ran, timeout=WAIT)


async def test_a_backend_that_cannot_pause_says_how_to_get_it(app: Conveyor) -> None:
    if app.backend.capabilities.pause:
        pytest.skip("capability: this backend can pause queues (tested above)")
    for call in (app.pause("emails"), app.resume("emails"), app.paused()):
        with pytest.raises(NotSupportedError, match=r"pausing queues; add .store="):
            await call
    # Its workers serve every queue, as before.
    ran: list[Any] = []
    register(app, ran)
    async with app.worker(queues=QUEUES, poll_interval=0.05, shutdown_timeout=5.0):
        await app.enqueue("send", 1)
        await eventually(lambda: ("send", 1) in ran, message="the job")
