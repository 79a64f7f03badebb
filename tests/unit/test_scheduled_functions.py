"""Functions on a schedule (issue 14, point 4): `@app.cron` / `@app.every`
register a job type and its schedule in one step; bad input is refused at
decoration time; the schedule is stored when a worker starts. Real worker
processes: tests/acceptance/test_discover_and_schedules.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    Conveyor,
    InvalidOptionError,
    JobContext,
    JobState,
    NotSupportedError,
    testing,
)
from conveyor.scheduled import FUNCTION_KEY
from conveyor.scheduler import InvalidScheduleError


@pytest.fixture
def app(tmp_path: Path) -> Conveyor:
    return Conveyor(f"sqlite:///{tmp_path / 'jobs.db'}")


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("0 9 * * FUNDAY", "bad cron expression '0 9 \\* \\* FUNDAY'"),
        ("0 9 * *", "expected 5 fields"),
        ("61 * * * *", "bad cron expression"),
        ("", "non-empty"),
    ],
)
def test_a_bad_cron_is_refused_at_decoration(app: Conveyor, expression: str, says: str) -> None:
    with pytest.raises(InvalidScheduleError, match=says):

        @app.cron(expression)
        def job() -> None: ...

    assert app.registry == {} and app.function_schedules == {}


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda app: app.cron("0 9 * * *", tz="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (lambda app: app.every("0 seconds"), "interval"),
        (lambda app: app.every("often"), "interval"),
        (lambda app: app.cron("@daily", catch_up="sometimes"), "catch_up must be one of"),
        (lambda app: app.every(60, max_catch_up=0), "max_catch_up"),
    ],
)
def test_bad_options_are_refused_at_decoration(app: Conveyor, make: Any, says: str) -> None:
    with pytest.raises(InvalidScheduleError, match=says):
        make(app)


def test_a_decorator_used_without_its_schedule_says_how(app: Conveyor) -> None:
    def job() -> None: ...

    with pytest.raises(InvalidScheduleError, match=r'@app.cron\("0 9 \* \* MON-FRI"\)'):
        app.cron(job)  # type: ignore[arg-type]
    with pytest.raises(InvalidScheduleError, match=r'@app.every\("5 minutes"\)'):
        app.every(job)  # type: ignore[arg-type]


def takes_a_payload(payload: dict[str, Any]) -> None: ...


def takes_two(a: int, b: int) -> None: ...


def takes_a_keyword(*, when: str) -> None: ...


def test_a_function_with_the_wrong_signature_is_refused(app: Conveyor) -> None:
    for function in (takes_a_payload, takes_two, takes_a_keyword):
        with pytest.raises(InvalidOptionError, match="must take no arguments, or only the job"):
            app.every("1 minute")(function)
    handle = app.job("typed")(lambda payload: None)
    with pytest.raises(InvalidOptionError, match="not on the job type 'typed'"):
        app.every("1 minute")(handle)
    assert sorted(app.registry) == ["typed"] and app.function_schedules == {}


def test_the_job_type_is_named_after_the_function_unless_named(app: Conveyor) -> None:
    def plain() -> None: ...

    async def with_ctx(ctx: JobContext) -> None: ...

    def with_defaults(ctx: JobContext, extra: int = 1) -> None: ...

    returned = app.every("5 minutes")(plain)
    assert returned is plain  # still the function, callable as it is
    app.cron("0 9 * * MON-FRI", tz="Europe/Berlin", name="morning", queue="reports", retries=0)(
        with_ctx
    )
    app.every(30)(with_defaults)
    plain_name = f"{__name__}.{plain.__qualname__}"
    assert sorted(app.registry) == sorted(
        [plain_name, "morning", f"{__name__}.{with_defaults.__qualname__}"]
    )
    morning = app.registry["morning"]
    assert (morning.defaults.queue, morning.defaults.retries) == ("reports", 0)
    assert morning.is_async and not app.registry[plain_name].is_async
    assert app.function_schedules["morning"].tz == "Europe/Berlin"
    assert app.function_schedules[plain_name].every == 300
    with pytest.raises(InvalidOptionError, match="already registered"):
        app.every("1 hour", name="morning")(plain)


async def test_schedules_are_stored_when_work_starts_and_run_the_functions(
    app: Conveyor,
) -> None:
    calls: list[Any] = []

    @app.every("10 minutes", name="sweep")
    def sweep() -> None:
        calls.append("sweep")

    @app.cron("30 8 * * *", tz="Europe/Berlin", name="report", catch_up="all")
    async def report(ctx: JobContext) -> str:
        calls.append(ctx.job.name)
        return "reported"

    async with app:
        assert await app.list_recurring() == []  # decorating stores nothing
        with testing.FakeClock(app, datetime(2026, 3, 28, 12, 0, tzinfo=UTC)) as clock:
            assert await app.drain() == []  # stores the schedules; nothing due yet
            stored = {s.name: s for s in await app.list_recurring()}
            assert set(stored) == {"sweep", "report"}
            assert stored["report"].key == FUNCTION_KEY and stored["report"].catch_up == "all"
            # Over the change to summer time: 08:30 Berlin is 07:30 UTC then 06:30 UTC.
            assert stored["report"].next_run == datetime(2026, 3, 29, 6, 30, tzinfo=UTC)
            clock.set(datetime(2026, 3, 29, 6, 30, tzinfo=UTC))
            ran = await app.drain()
        assert sorted(job.name for job in ran) == ["report", "sweep"]
        assert all(job.state is JobState.COMPLETED for job in ran)
        assert sorted(calls) == ["report", "sweep"]


async def test_storing_again_keeps_the_next_run_and_an_operators_disable(app: Conveyor) -> None:
    @app.every("1 hour", name="hourly")
    def hourly() -> None: ...

    async with app:
        [first] = await app.store_schedules()
        await app.disable_recurring("hourly")
        [again] = await app.store_schedules()
        assert again.enabled is False
        await app.enable_recurring("hourly")
        enabled = await app.get_recurring("hourly")
        [third] = await app.store_schedules()
        assert enabled is not None and third.next_run == enabled.next_run
        assert first.every == third.every


async def test_a_decorated_schedule_gone_from_the_code_is_kept_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    before = Conveyor(url)
    before.every("1 hour", name="old.cleanup")(lambda: None)
    before.job("report")(lambda payload: None)
    async with before:
        await before.store_schedules()
        await before.recurring("seeded", "report", {}, every="1 day")  # app.recurring's own
    after = Conveyor(url)  # the next release: old.cleanup removed
    after.job("report")(lambda payload: None)
    async with after:
        with caplog.at_level(logging.WARNING, logger="conveyor.scheduler"):
            assert await after.store_schedules() == []
        names = {s.name for s in await after.list_recurring()}
    assert names == {"old.cleanup", "seeded"}  # nothing deleted
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "old.cleanup" in warnings[0], warnings
    assert "conveyor recurring delete old.cleanup" in warnings[0]


def test_a_backend_without_schedules_refuses_at_start() -> None:
    pytest.importorskip("aiobotocore")
    app = Conveyor("sqs://jobs?region=us-east-1")  # a broker without a store
    app.every("1 minute", name="tick")(lambda: None)
    with pytest.raises(NotSupportedError, match=r"@app.cron/@app.every functions \(tick\)"):
        app.store_schedules_sync()
    app.close_sync()


def test_an_unknown_option_is_refused(app: Conveyor) -> None:
    with pytest.raises(InvalidOptionError, match=r"unknown option\(s\) timezone; known: tz, name"):
        app.every("1 minute", timezone="UTC")  # type: ignore[call-arg]
