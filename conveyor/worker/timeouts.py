"""The worker's job timeouts, on one loop timer per few milliseconds of
deadlines rather than one per job.

A busy worker starts thousands of jobs a second, each with a timeout, and
almost all of them end long before it. A timer per job (made, pushed on the
loop's heap, cancelled, swept off it) was a few percent of the worker's time
per job. Here the jobs whose deadlines fall in the same slice of `GRAIN`
seconds share one timer, set for the end of the slice: a job is never timed
out early, and at most `GRAIN` late. A job that ends leaves its slice; the
last one to leave cancels the slice's timer, so what is kept is bounded by
the jobs running, whatever their timeouts (a timer left for every slice
would pile up for as long as the timeout, and keep the worker alive).
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
        # slice number -> its timer and the items armed in it, by key
        self._slices: dict[int, tuple[asyncio.TimerHandle, dict[str, T]]] = {}

    def arm(self, key: str, item: T, timeout: float) -> int:
        """Time `item` out after `timeout` seconds (unless disarmed first);
        the slice it is in, which `disarm` needs."""
        loop = self._loop
        slice_ = math.ceil((loop.time() + timeout) / GRAIN)
        found = self._slices.get(slice_)
        if found is None:
            timer = loop.call_at(slice_ * GRAIN, self._fire, slice_)
            found = self._slices[slice_] = (timer, {})
        found[1][key] = item
        return slice_

    def disarm(self, key: str, slice_: int) -> None:
        found = self._slices.get(slice_)
        if found is not None:
            timer, armed = found
            armed.pop(key, None)
            if not armed:
                del self._slices[slice_]
                timer.cancel()

    def close(self) -> None:
        """Cancel every timer: nothing is timed out any more."""
        for timer, _ in self._slices.values():
            timer.cancel()
        self._slices.clear()

    def __len__(self) -> int:
        """Items armed now."""
        return sum(len(armed) for _, armed in self._slices.values())

    def slices(self) -> int:
        """Slices with a timer now."""
        return len(self._slices)

    def _fire(self, slice_: int) -> None:
        found = self._slices.pop(slice_, None)
        for item in (found[1] if found else {}).values():
            self._expire(item)
