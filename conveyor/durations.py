"""Durations, parsed in one place and said back in one way.

Schedule intervals (`every=`) and the command line's ages (`purge
--older-than`) take the same forms: seconds as a number, a timedelta, or text
with a unit on every number: "30s", "10m", "1h30m", "7d", "2w", "90 seconds",
"every 5 minutes", "1 hour 30 minutes", "hour" (one of it).

Text without a unit ("7") is refused on purpose: in `--older-than 7` the unit
is anyone's guess, and guessing wrong deletes the wrong jobs.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from conveyor.job import InvalidOptionError

_SECOND, _MINUTE, _HOUR, _DAY, _WEEK = 1, 60, 3600, 86400, 604800

UNITS: dict[str, int] = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), _SECOND),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), _MINUTE),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), _HOUR),
    **dict.fromkeys(("d", "day", "days"), _DAY),
    **dict.fromkeys(("w", "week", "weeks"), _WEEK),
}

# Below this every backend stores and adds seconds exactly (about 3,000 years).
_LONGEST = 1e11

_EXAMPLES = "e.g. 30s, 10m, 12h, 7d, 1h30m or '2 hours'"
# One number-and-unit part; the number may be left out only when the text is
# one part ("every hour").
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*")


def is_seconds(value: object) -> bool:
    """Whether `value` is a finite number of seconds: an int or a float, not a
    bool (True would read as one second), not NaN or an infinity (no store
    can hold a time computed from them), nor an int too big for a float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def seconds_within(value: object, *, allow_zero: bool = False, below: float = _LONGEST) -> bool:
    """Whether `value` is a number of seconds above zero (or zero, when
    `allow_zero`) and under `below`; the one check every option given in
    seconds goes through, each saying its own error."""
    if not is_seconds(value):
        return False
    seconds = float(value)  # type: ignore[arg-type]  # is_seconds: an int or a float
    return (seconds >= 0 if allow_zero else seconds > 0) and seconds < below


class InvalidDurationError(InvalidOptionError):
    """A duration that is not a number, timedelta or text with units, or is out of range."""


def parse_duration(
    value: float | int | timedelta | str,
    *,
    what: str = "a duration",
    allow_zero: bool = False,
) -> float:
    """Seconds from a number, a timedelta, or text such as "1h30m" or "every 5 minutes".

    `what` names the value in errors (e.g. "--older-than"). Zero is refused
    unless `allow_zero` (an interval of zero never advances; an age of zero
    means "everything")."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise InvalidDurationError(_type_error(what, value))
    if not seconds_within(seconds, allow_zero=allow_zero):
        bound = "zero or more" if allow_zero else "above zero"
        raise InvalidDurationError(f"{what} must be {bound} and finite, not {value!r}")
    return seconds


def _type_error(what: str, value: object) -> str:
    return f"{what} must be seconds, a timedelta or text such as '10 minutes', not {value!r}"


def _parse_text(text: str, what: str) -> float:
    compact = text.strip().lower()
    if compact.startswith("every "):
        compact = compact[len("every ") :]
    parts: list[tuple[str | None, str]] = []
    position = 0
    while position < len(compact):
        match = _PART.match(compact, position)
        if match is None or match.group(2) not in UNITS:
            parts = []
            break
        parts.append((match.group(1), match.group(2)))
        position = match.end()
    if not parts or (len(parts) > 1 and any(number is None for number, _ in parts)):
        raise InvalidDurationError(f"{what} must be a number and a unit, {_EXAMPLES}, not {text!r}")
    return sum(float(number or 1) * UNITS[unit] for number, unit in parts)


def describe_seconds(seconds: float) -> str:
    """The duration in words, in the largest unit that divides it evenly:
    "1 second", "90 seconds", "10 minutes", "2 days"."""
    for unit, size in (("week", _WEEK), ("day", _DAY), ("hour", _HOUR), ("minute", _MINUTE)):
        if seconds >= size and seconds % size == 0:
            return _count(int(seconds // size), unit)
    if seconds == int(seconds):
        return _count(int(seconds), "second")
    return f"{seconds:g} seconds"


def _count(amount: int, unit: str) -> str:
    return f"{amount} {unit}" if amount == 1 else f"{amount} {unit}s"
