"""How long a failed job waits before its next attempt."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from conveyor.durations import is_seconds, seconds_within
from conveyor.job import InvalidOptionError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number `attempt` (1 = the first retry).

    Exponential by default: `base * factor ** (attempt - 1)`, capped at
    `maximum`, then spread by `jitter` (0.25 draws from 75 % to 125 %) so a burst
    of failures does not come back as a burst.
    """

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        numbers = (self.base, self.factor, self.maximum, self.jitter)
        if not all(is_seconds(n) for n in numbers):
            raise InvalidOptionError(
                f"backoff needs finite numbers, got base={self.base!r}, factor={self.factor!r},"
                f" maximum={self.maximum!r}, jitter={self.jitter!r}"
            )
        if self.base < 0 or self.factor < 1 or self.maximum < 0 or not 0 <= self.jitter <= 1:
            raise InvalidOptionError(
                "backoff needs base >= 0, factor >= 1, maximum >= 0 and 0 <= jitter <= 1"
            )

    @classmethod
    def exponential(
        cls, base: float = 1.0, factor: float = 2.0, maximum: float = 3600.0, jitter: float = 0.25
    ) -> Backoff:
        return cls(base, factor, maximum, jitter)

    @classmethod
    def fixed(cls, seconds: float, jitter: float = 0.0) -> Backoff:
        return cls(seconds, 1.0, seconds, jitter)

    def delay(self, attempt: int) -> float:
        try:
            grown = self.base * float(self.factor) ** max(0, attempt - 1)
        except OverflowError:  # a late attempt: far past any maximum
            grown = math.inf
        raw = min(self.maximum, grown)
        if self.jitter:
            raw *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, raw)


BackoffLike = Backoff | float | int | Callable[[int], float]


def as_backoff(value: BackoffLike | None) -> Callable[[int], float]:
    """Normalise what users may pass as `backoff=` into attempt -> seconds."""
    if value is None:
        return Backoff().delay
    if isinstance(value, Backoff):
        return value.delay
    if isinstance(value, bool):
        raise InvalidOptionError("backoff must be seconds, a Backoff or a callable, not a bool")
    if isinstance(value, int | float):
        if not seconds_within(value, allow_zero=True):
            raise InvalidOptionError(f"backoff must be a finite number >= 0 seconds, got {value}")
        return Backoff.fixed(float(value)).delay
    if callable(value):
        return _checked(value)
    raise InvalidOptionError(f"backoff must be seconds, a Backoff or a callable, got {value!r}")


class BadBackoffError(InvalidOptionError):
    """A backoff callable answered no delay a retry can wait (or raised)."""


def _checked(backoff: Callable[[int], float]) -> Callable[[int], float]:
    """`backoff` whose answer must be seconds: a finite number (below 0 is
    0). NaN, infinity or anything else raises BadBackoffError, which fails the
    job saying so: no backend could store such a retry time, and a worker
    must not stop at it."""

    def delay(attempt: int) -> float:
        try:
            seconds = backoff(attempt)
        except Exception as exc:
            raise BadBackoffError(
                f"backoff {backoff!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not is_seconds(seconds):
            raise BadBackoffError(f"backoff {backoff!r} returned {seconds!r}, not finite seconds")
        return max(0.0, float(seconds))

    return delay
