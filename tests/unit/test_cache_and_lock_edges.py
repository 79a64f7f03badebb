"""Edges of the cache and locks that no backend's store decides: a
single-flight whose cache read is overtaken, and settings out of range."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.job import InvalidOptionError


async def test_a_wrap_whose_read_is_overtaken_does_not_compute_again() -> None:
    """Two callers miss; the first computes and stores before the second's
    read (on another pooled connection, say) comes back empty. The second
    must find the value, not compute it once more."""
    app = Conveyor("memory://")
    async with app:
        store: Any = await app.cache._store()
        real_get = store.cache_get
        first_done = asyncio.Event()
        slowed: set[asyncio.Task[Any]] = set()

        async def overtaken(key: str) -> Any:
            answer = await real_get(key)
            task = asyncio.current_task()
            if task is second and task not in slowed:  # answered before the store
                slowed.add(task)
                await first_done.wait()
            return answer

        store.cache_get = overtaken
        computed = 0

        async def compute() -> int:
            nonlocal computed
            computed += 1
            await asyncio.sleep(0.01)
            return 42

        first = asyncio.create_task(app.cache.wrap("k", 30, compute))
        second = asyncio.create_task(app.cache.wrap("k", 30, compute))
        assert await first == 42
        assert slowed  # the second caller's read was held back
        first_done.set()
        assert await second == 42
        assert computed == 1


@pytest.mark.parametrize("ttl", [1e16, math.inf, math.nan, 0, -1])
async def test_a_cache_ttl_out_of_every_backends_range_is_refused(ttl: float) -> None:
    app = Conveyor("memory://")
    async with app:
        with pytest.raises(InvalidOptionError, match="cache ttl"):
            await app.cache.set("k", 1, ttl=ttl)


@pytest.mark.parametrize("wait", [math.nan, math.inf, -1.0, "5"])
async def test_a_lock_wait_that_is_not_seconds_is_refused(wait: Any) -> None:
    app = Conveyor("memory://")
    async with app:
        held = await app.locks.acquire("k", 30)
        assert held is not None
        with pytest.raises(InvalidOptionError, match="lock wait"):
            await asyncio.wait_for(app.locks.acquire("k", 30, wait=wait), 5)
