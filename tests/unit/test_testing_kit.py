"""conveyor.testing: the fake clock's bounds and `fail_next`'s checks (the
kit at work on every backend is in tests/conformance/test_drain.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import conveyor.backends.memory
import conveyor.backends.sqlite.writer
import conveyor.job
from conveyor import Conveyor, InvalidOptionError, JobState, NotSupportedError, UnknownJobError
from conveyor.testing import FakeClock, fail_next


def test_the_clock_stands_still_and_moves_when_told() -> None:
    app = Conveyor("memory://")
    start = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    with FakeClock(app, start=start) as clock:
        assert clock.now() == start
        assert conveyor.backends.memory.time.time() == start.timestamp()
        clock.advance(timedelta(minutes=5))
        assert clock.now() == start + timedelta(minutes=5)
        clock.set(start + timedelta(hours=1))
        assert conveyor.backends.memory.time.time() == (start + timedelta(hours=1)).timestamp()
        # What measures real time keeps it: job ids, the SQLite writer's stalls.
        assert conveyor.job.time is time
        assert conveyor.backends.sqlite.writer.time is time
        assert abs(conveyor.backends.memory.time.monotonic() - time.monotonic()) < 5
    assert conveyor.backends.memory.time is time  # put back


def test_the_clock_only_moves_forward_and_one_is_active_at_a_time() -> None:
    app = Conveyor("memory://")
    with FakeClock(app) as clock:
        with pytest.raises(InvalidOptionError, match="forward"):
            clock.advance(-1)
        with pytest.raises(InvalidOptionError, match="forward"):
            clock.set(clock.time() - 1)
        with pytest.raises(InvalidOptionError, match="already active"):
            FakeClock(app).start()
    with FakeClock(app):  # free again once stopped
        pass


def test_a_server_clock_is_refused_with_the_reason() -> None:
    app = Conveyor("redis://127.0.0.1:6379/0")  # not connected: refused before that
    with pytest.raises(NotSupportedError, match="server's clock"):
        FakeClock(app)


async def test_delayed_enqueues_count_from_the_fake_now(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/jobs.db")
    try:
        with FakeClock(app, start=datetime(2030, 1, 1, tzinfo=UTC)) as clock:

            @app.job("later")
            async def later(payload: object) -> None: ...

            job = await app.enqueue("later", {}, delay=60)
            assert job.run_at == clock.now() + timedelta(seconds=60)
            assert job.state is JobState.SCHEDULED
    finally:
        await app.close()


def test_fail_next_checks_its_arguments() -> None:
    app = Conveyor("memory://")

    @app.job("known")
    def known(payload: object) -> None: ...

    with pytest.raises(UnknownJobError, match="knwon"):
        fail_next(app, "knwon")
    with pytest.raises(InvalidOptionError, match="times"):
        fail_next(app, "known", times=0)


async def test_fail_next_fails_as_many_attempts_as_asked() -> None:
    app = Conveyor("memory://")

    @app.job("flaky", retries=3, backoff=0)
    async def flaky(payload: object) -> str:
        return "ok"

    fail_next(app, "flaky", exc=ValueError, times=2)
    await app.enqueue("flaky", {})
    [done] = await app.drain()
    assert (done.state, done.attempts, done.result) == (JobState.COMPLETED, 3, "ok")
    await app.enqueue("flaky", {})
    [again] = await app.drain()
    assert again.attempts == 1  # used up
    await app.close()
