"""Durations: one parser for schedule intervals (`every=`) and the CLI's ages
(`purge --older-than`), and one way of saying them back."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from conveyor.durations import InvalidDurationError, describe_seconds, parse_duration
from conveyor.job import InvalidOptionError
from conveyor.scheduler import InvalidScheduleError, Schedule, parse_every


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        # what the CLI accepted
        ("30s", 30),
        ("10m", 600),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("1H 30M", 5400),
        ("0.5h", 1800),
        # what every= accepted
        ("30 seconds", 30),
        ("every 30 minutes", 1800),
        ("every 1 day", 86400),
        ("every hour", 3600),
        ("minute", 60),
        ("3 hrs", 10800),
        (timedelta(minutes=5), 300),
        (45, 45),
        (0.5, 0.5),
        # and both at once
        ("90s", 90),
        ("1 hour", 3600),
        ("1 hour 30 minutes", 5400),
        ("every 1h30m", 5400),
        ("  2 Days ", 172800),
    ],
)
def test_accepted(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert parse_every(value) == seconds  # the scheduler's name for the same parser


@pytest.mark.parametrize(
    "bad", ["", "7", "7x", "d7", "1h30", "every", "every fortnight", "-5s", "1h-30m", "hour 5m"]
)
def test_bad_text_says_how_to_write_it(bad: str) -> None:
    with pytest.raises(InvalidDurationError, match=r"a number and a unit, e\.g\. 30s, 10m"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (True, "must be seconds, a timedelta or text"),
        (None, "must be seconds, a timedelta or text"),
        ([60], "must be seconds, a timedelta or text"),
        (0, "above zero"),
        ("0s", "above zero"),
        (timedelta(0), "above zero"),
        (-5, "above zero"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (1e12, "finite"),
    ],
)
def test_bad_values(bad: Any, message: str) -> None:
    with pytest.raises(InvalidDurationError, match=message):
        parse_duration(bad)


def test_zero_where_it_makes_sense() -> None:
    assert parse_duration("0s", allow_zero=True) == 0
    assert parse_duration(0, allow_zero=True) == 0
    with pytest.raises(InvalidDurationError, match="zero or more"):
        parse_duration(-1, allow_zero=True)


def test_errors_name_what_was_parsed() -> None:
    with pytest.raises(InvalidDurationError, match=r"^--older-than must be .*'7'$"):
        parse_duration("7", what="--older-than")
    error = InvalidDurationError("x")
    assert isinstance(error, InvalidOptionError)  # callers catching the broad error still do


def test_a_bad_interval_is_a_schedule_error() -> None:
    with pytest.raises(InvalidScheduleError, match=r"interval \(every=\)"):
        parse_every("every fortnight")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "1 second"),
        (2, "2 seconds"),
        (0.5, "0.5 seconds"),
        (60, "1 minute"),
        (90, "90 seconds"),
        (600, "10 minutes"),
        (3600, "1 hour"),
        (5400, "90 minutes"),
        (86400, "1 day"),
        (172800, "2 days"),
        (604800, "1 week"),
        (1209600, "2 weeks"),
    ],
)
def test_describe_seconds(seconds: float, text: str) -> None:
    assert describe_seconds(seconds) == text
    assert parse_duration(text) == seconds  # what is said back parses again


def test_schedule_says_every_1_second() -> None:
    schedule = Schedule(
        name="tick",
        job_name="tick",
        payload=None,
        cron=None,
        every=timedelta(seconds=1),
        tz="UTC",
        key=None,
        enabled=True,
        next_run=None,
        last_run=None,
        last_error=None,
        catch_up="once",
        max_catch_up=1,
        misfire_grace=0.0,
    )
    assert schedule.spec == "every 1 second"  # `recurring ls` said "every 1 seconds"


def test_an_int_too_big_for_a_float_is_no_number_of_seconds() -> None:
    from conveyor.durations import is_seconds, seconds_within
    from conveyor.job import InvalidOptionError
    from conveyor.options import check_timeout

    assert not is_seconds(10**400) and not seconds_within(10**400)
    assert is_seconds(10**6) and is_seconds(0.5) and not is_seconds(float("nan"))
    with pytest.raises(InvalidOptionError):
        check_timeout(10**400)  # said as a bad option, not an OverflowError
