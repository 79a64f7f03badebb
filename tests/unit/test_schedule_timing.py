"""Next-run computation, driven with fixed datetimes: cron fields, intervals,
time zones across daylight-saving changes, and catch-up planning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conveyor.backends.stores import ScheduleRecord
from conveyor.scheduler import (
    InvalidScheduleError,
    next_after,
    parse_cron,
    parse_every,
    parse_tz,
    plan,
)


def record(
    cron: str | None = None,
    every: float | None = None,
    tz: str = "UTC",
    next_run: float = 0.0,
    **extra: object,
) -> ScheduleRecord:
    return ScheduleRecord(
        name="s",
        job_name="j",
        payload="null",
        cron=parse_cron(cron) if cron else None,
        every=every,
        tz=tz,
        key=None,
        enabled=True,
        next_run=next_run,
        created_at=0.0,
        updated_at=0.0,
        **extra,  # type: ignore[arg-type]
    )


def fires_on_day(cron: str, tz: str, day: datetime) -> list[datetime]:
    """Every fire time of `cron` within the local calendar day `day`."""
    zone = ZoneInfo(tz)
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    end = start + timedelta(days=1, hours=2)
    rec = record(cron, tz=tz)
    out, t = [], start.timestamp() - 1
    while True:
        t = next_after(rec, t)
        local = datetime.fromtimestamp(t, zone)
        if t >= end.timestamp() or local.date() != start.date():
            break
        out.append(local)
    return out


@pytest.mark.parametrize(
    ("tz", "spring", "fall"),
    [
        ("America/New_York", datetime(2026, 3, 8), datetime(2026, 11, 1)),
        ("Europe/Berlin", datetime(2026, 3, 29), datetime(2026, 10, 25)),
    ],
)
def test_daily_0230_fires_exactly_once_on_both_transition_days(
    tz: str, spring: datetime, fall: datetime
) -> None:
    spring_fires = fires_on_day("30 2 * * *", tz, spring)
    assert len(spring_fires) == 1
    # 02:30 does not exist that day: it fires at the first instant after the gap.
    assert (spring_fires[0].hour, spring_fires[0].minute) == (3, 0)
    fall_fires = fires_on_day("30 2 * * *", tz, fall)
    assert len(fall_fires) == 1
    assert (fall_fires[0].hour, fall_fires[0].minute) == (2, 30)
    # The first occurrence of a repeated wall time (summer time offset).
    summer = ZoneInfo(tz).utcoffset(datetime(2026, 7, 1))
    if tz == "Europe/Berlin":  # 02:30 repeats in Berlin, not in New York
        assert fall_fires[0].utcoffset() == summer
    # The day after each change runs at 02:30 again.
    for day in (spring, fall):
        after = fires_on_day("30 2 * * *", tz, day + timedelta(days=1))
        assert [(f.hour, f.minute) for f in after] == [(2, 30)]


@pytest.mark.parametrize(
    ("cron", "spring_fires", "fall_fires"),
    [
        # minutes given as a wildcard, the hour named: the same as spelled out
        ("*/30 2 * * *", [(3, 0)], [(2, 0), (2, 30)]),
        ("0-59/30 2 * * *", [(3, 0)], [(2, 0), (2, 30)]),
        ("*/30 1 * * *", [(1, 0), (1, 30)], [(1, 0), (1, 30)]),
        ("0,30 1 * * *", [(1, 0), (1, 30)], [(1, 0), (1, 30)]),
    ],
)
def test_a_wildcard_minute_in_a_named_hour_fires_once_per_tick_on_change_days(
    cron: str, spring_fires: list[tuple[int, int]], fall_fires: list[tuple[int, int]]
) -> None:
    """A skipped time fires once just after the gap and a repeated one once,
    whether the minutes are spelled out or given as */n."""
    tz = "America/New_York"
    spring = fires_on_day(cron, tz, datetime(2026, 3, 8))
    fall = fires_on_day(cron, tz, datetime(2026, 11, 1))
    assert [(f.hour, f.minute) for f in spring] == spring_fires
    assert [(f.hour, f.minute) for f in fall] == fall_fires


def test_hourly_runs_in_both_real_hours_of_a_repeated_hour() -> None:
    fires = fires_on_day("30 * * * *", "America/New_York", datetime(2026, 11, 1))
    assert len(fires) == 25  # a 25-hour day
    assert sum(1 for f in fires if f.hour == 1) == 2


@pytest.mark.parametrize("minute", [5, 20, 40, 50])
def test_a_tick_is_after_a_moment_in_the_repeated_hour(minute: int) -> None:
    """In the second 01:xx of a fall-back day, a daily 01:45 has fired
    already (at its first occurrence): the next tick is the next day's, not
    that first occurrence again, which would fire once per scheduler pass."""
    zone = ZoneInfo("America/New_York")
    after = datetime(2026, 11, 1, 1, minute, tzinfo=zone, fold=1).timestamp()  # EST
    daily = next_after(record("45 1 * * *", tz="America/New_York"), after)
    assert daily > after
    assert datetime.fromtimestamp(daily, zone) == datetime(2026, 11, 2, 1, 45, tzinfo=zone)
    hourly = next_after(record("30 * * * *", tz="America/New_York"), after)
    assert hourly > after
    expected = datetime(2026, 11, 1, 1, 30, tzinfo=zone, fold=1) if minute < 30 else None
    if expected is None:
        expected = datetime(2026, 11, 1, 2, 30, tzinfo=zone)
    assert hourly == expected.timestamp()


def test_cron_is_evaluated_in_the_schedule_zone() -> None:
    rec = record("0 9 * * *", tz="America/New_York")
    after = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()  # 08:00 in New York
    fire = datetime.fromtimestamp(next_after(rec, after), UTC)
    assert fire == datetime(2026, 6, 1, 13, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", datetime(2026, 1, 1, 0, 7), datetime(2026, 1, 1, 0, 15)),
        ("0 9 * * MON-FRI", datetime(2026, 1, 2, 10, 0), datetime(2026, 1, 5, 9, 0)),
        ("0 0 1 JAN,JUL *", datetime(2026, 2, 1), datetime(2026, 7, 1)),
        ("5,10 1-2 * * *", datetime(2026, 1, 1, 1, 6), datetime(2026, 1, 1, 1, 10)),
        ("@hourly", datetime(2026, 1, 1, 0, 1), datetime(2026, 1, 1, 1, 0)),
        ("@daily", datetime(2026, 1, 1, 0, 1), datetime(2026, 1, 2)),
        ("@weekly", datetime(2026, 1, 1), datetime(2026, 1, 4)),  # Sunday
        ("@monthly", datetime(2026, 1, 1, 0, 1), datetime(2026, 2, 1)),
    ],
)
def test_cron_fields(expr: str, after: datetime, expected: datetime) -> None:
    rec = record(expr)
    got = next_after(rec, after.replace(tzinfo=UTC).timestamp())
    assert datetime.fromtimestamp(got, UTC) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("61 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 32 * *", "day-of-month"),
        ("* * * FOO *", "month"),
        ("* * * * XYZ", "day-of-week"),
    ],
)
def test_malformed_cron_names_the_field(expr: str, field: str) -> None:
    with pytest.raises(InvalidScheduleError, match=field):
        parse_cron(expr)


def test_wrong_field_count_is_explained() -> None:
    with pytest.raises(InvalidScheduleError, match="5 fields"):
        parse_cron("* * *")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30 seconds", 30),
        ("every 30 minutes", 1800),
        ("every 1 day", 86400),
        ("2h", 7200),
        ("every hour", 3600),
        (timedelta(minutes=5), 300),
        (45, 45),
        (0.5, 0.5),
    ],
)
def test_intervals(text: object, seconds: float) -> None:
    assert parse_every(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -5, "0 seconds", timedelta(0), "every fortnight", "", True])
def test_bad_intervals(bad: object) -> None:
    with pytest.raises(InvalidScheduleError):
        parse_every(bad)  # type: ignore[arg-type]


def test_unknown_time_zone() -> None:
    with pytest.raises(InvalidScheduleError, match="Mars/Olympus"):
        parse_tz("Mars/Olympus")


def test_intervals_keep_their_own_anchor() -> None:
    rec = record(every=60.0, next_run=1000.0)
    assert next_after(rec, 500.0) == 1000.0
    assert next_after(rec, 1000.0) == 1060.0
    assert next_after(rec, 1059.9) == 1060.0


def test_catch_up_once_fires_one_job_for_many_missed_ticks() -> None:
    rec = record(every=60.0, next_run=1000.0)
    result = plan(rec, now=1000.0 + 10 * 60 + 5)
    assert result.fire == [1600.0]
    assert result.missed == 11
    assert result.next_run == 1660.0


def test_catch_up_all_is_bounded() -> None:
    rec = record(every=60.0, next_run=1000.0, catch_up="all", max_catch_up=3)
    result = plan(rec, now=1000.0 + 10 * 60 + 5)
    assert result.fire == [1480.0, 1540.0, 1600.0]
    assert result.next_run == 1660.0


def test_catch_up_skip_drops_misfires_but_keeps_a_tick_within_grace() -> None:
    rec = record(every=60.0, next_run=1000.0, catch_up="skip", misfire_grace=10.0)
    assert plan(rec, now=1005.0).fire == [1000.0]  # on time
    late = plan(rec, now=1000.0 + 5 * 60 + 30)  # latest tick 30 s late: a misfire
    assert late.fire == []
    assert late.next_run == 1360.0


def test_a_single_late_tick_still_fires_under_once() -> None:
    rec = record(cron="0 * * * *", next_run=datetime(2026, 1, 1, 1, tzinfo=UTC).timestamp())
    now = datetime(2026, 1, 1, 1, 30, tzinfo=UTC).timestamp()
    result = plan(rec, now)
    assert len(result.fire) == 1
    assert result.next_run == datetime(2026, 1, 1, 2, tzinfo=UTC).timestamp()
