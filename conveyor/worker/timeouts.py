"""The worker's job timeouts, on one loop timer per few milliseconds of
deadlines rather than one per job.

A busy worker starts thousands of jobs a second, each with a timeout, and
almost all of them end long before it. A timer per job (made, pushed on the
loop's heap, cancelled, swept off it) was a few percent of the worker's time
per job. Here the jobs whose deadlines fall in the same slice of `GRAIN`
seconds share one timer, set for the end of the slice: a job is never timed
out early, and at most `GRAIN` late. A job that ends leaves its slice; a
slice left empty keeps its timer, which then finds nothing to do (one
timer per slice, whatever the number of jobs).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Final, Generic, TypeVar

# The width of a slice of deadlines (seconds): how late a timeout may fire.
GRAIN: Final = 0.01

T = TypeVar("T")


class Timeouts(Generic[T]):
    """Calls `expire(item)` for each item still armed at its deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[T], None]) -> None:
        self._loop = loop
        self._expire = expire
        # slice number -> the items armed in it, by key
        self._slices: dict[int, dict[str, T]] = {}

    def arm(self, key: str, item: T, timeout: float) -> int:
        """Time `item` out after `timeout` seconds (unless disarmed first);
        the slice it is in, which `disarm` needs."""
        loop = self._loop
        slice_ = math.ceil((loop.time() + timeout) / GRAIN)
        armed = self._slices.get(slice_)
        if armed is None:
            armed = self._slices[slice_] = {}
            loop.call_at(slice_ * GRAIN, self._fire, slice_)
        armed[key] = item
        return slice_

    def disarm(self, key: str, slice_: int) -> None:
        armed = self._slices.get(slice_)
        if armed is not None:
            armed.pop(key, None)

    def __len__(self) -> int:
        """Items armed now."""
        return sum(len(armed) for armed in self._slices.values())

    def _fire(self, slice_: int) -> None:
        armed = self._slices.pop(slice_, None)
        for item in (armed or {}).values():
            self._expire(item)
