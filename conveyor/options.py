"""A job's options: the defaults a job type gives its jobs, and the checks
every way of setting an option (a job type, an enqueue, a schedule, the
CLI) goes through, with the error each bad value gets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from conveyor.durations import seconds_within
from conveyor.job import InvalidOptionError, JobState


@dataclass(frozen=True, slots=True)
class JobDefaults:
    retries: int = 3
    timeout: float | None = 30.0
    priority: int = 0
    queue: str = "default"

    def __post_init__(self) -> None:
        check_retries(self.retries)
        check_timeout(self.timeout)
        check_priority(self.priority)
        check_queue(self.queue)


# Every backend stores attempt counts in a 32-bit column or wider.
MAX_RETRIES = 1_000_000


def check_retries(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise InvalidOptionError(
            f"retries must be an integer from 0 to {MAX_RETRIES:,}, got {value!r}"
        )
    return value


# The most a listing asks for or skips: within every backend's integers.
MAX_LISTING = 1_000_000_000


def check_listing(limit: int, offset: int) -> None:
    for value in (limit, offset):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LISTING:
            raise InvalidOptionError(
                f"limit and offset must be integers from 0 to {MAX_LISTING:,},"
                f" got limit={limit!r}, offset={offset!r}"
            )


def check_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if not seconds_within(value, below=1e9):
        raise InvalidOptionError(f"timeout must be > 0 seconds or None, got {value!r}")
    return float(value)


PRIORITY_RANGE = range(-1000, 1001)  # every backend can order this range exactly


def check_priority(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITY_RANGE:
        raise InvalidOptionError(f"priority must be an integer from -1000 to 1000, got {value!r}")
    return value


# The longest delay an enqueue takes.
MAX_DELAY = 100 * 365.25 * 86400.0


def check_state(value: JobState | str | None) -> JobState | None:
    """A job state given by name or value (None: any)."""
    if value is None or isinstance(value, JobState):
        return value
    try:
        return JobState(value)
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise InvalidOptionError(f"unknown job state {value!r}; known: {known}") from None


def due_time(now: float, delay: float | timedelta | None, run_at: datetime | None) -> float:
    """When an enqueue with `delay` or `run_at` (one at most) falls due."""
    if delay is not None and run_at is not None:
        raise InvalidOptionError("give either delay or run_at, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidOptionError(f"run_at must be a datetime, got {run_at!r}")
        if run_at.tzinfo is None:
            raise InvalidOptionError(
                "run_at must be timezone-aware (e.g. datetime.now(UTC) + timedelta(...))"
            )
        return run_at.timestamp()
    if delay is None:
        return now
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidOptionError(f"delay must be seconds or a timedelta, got {delay!r}")
    if not 0 <= seconds <= MAX_DELAY:  # also refuses NaN
        raise InvalidOptionError(f"delay must be between 0 seconds and 100 years, got {delay!r}")
    return now + seconds


def check_queue(value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidOptionError(f"queue must be a non-empty name, got {value!r}")
    return value
