"""Redis: queued jobs left in the per-queue set of the layout before per-name
sets (issue 7, point 4) are still counted, listed and claimed after an upgrade."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, JobState

pytestmark = pytest.mark.redis


async def test_jobs_queued_in_the_old_per_queue_set_are_adopted(
    redis_urls: Callable[[], str],
) -> None:
    import redis.asyncio as aioredis

    app = Conveyor(redis_urls())

    @app.job("A")
    async def a(payload: Any) -> None:
        return None

    @app.job("B")
    async def b(payload: Any) -> None:
        return None

    async with app:
        older = [await app.enqueue("A", n) for n in range(3)] + [await app.enqueue("B", 9)]
        newer = await app.enqueue("A", "new")
        # Move the first four where a release before per-name sets kept them.
        prefix = app.backend.prefix  # type: ignore[attr-defined]
        client = aioredis.Redis.from_url(app.url.split("?")[0])
        try:
            for job in older:
                key = f"{prefix}:queued:{len(job.queue)}:{job.queue}:{job.name}"
                score = await client.zscore(key, job.id)
                await client.zrem(key, job.id)
                await client.zadd(f"{prefix}:ready:{job.queue}", {job.id: score})
        finally:
            await client.aclose()

        assert (await app.stats())["default"]["queued"] == 5
        listed = await app.list_jobs(state=JobState.QUEUED, limit=10)
        assert {job.id for job in listed} == {job.id for job in [*older, newer]}
        claimed = await app.backend.claim(["default"], 10, 30.0, time.time(), names=["A"])
        assert [job.id for job in claimed] == [older[0].id, older[1].id, older[2].id, newer.id]
        assert await app.unserved() == {"default": {"B": 1}}
        (last,) = await app.backend.claim(["default"], 10, 30.0, time.time(), names=["B"])
        assert last.id == older[3].id
