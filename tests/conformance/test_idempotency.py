"""Idempotency keys: unique among the jobs the backend retains; a duplicate
enqueue returns the existing job flagged `duplicate` and stores nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conveyor import Conveyor, JobState

from .conftest import needs
from .helpers import WAIT

pytestmark = needs("lookup")


def counting_app(app: Conveyor) -> list[Any]:
    ran: list[Any] = []

    @app.job("count")
    async def count(payload: Any) -> None:
        ran.append(payload)

    return ran


def total(stats: dict[str, dict[str, int]]) -> int:
    return sum(sum(counts.values()) for counts in stats.values())


async def test_duplicate_key_returns_the_existing_job_and_runs_once(app: Conveyor, worker) -> None:
    ran = counting_app(app)
    enqueued: list[Any] = []
    app.on("job.enqueued", lambda event: enqueued.append(event.job))

    first = await app.enqueue("count", {"n": 1}, key="welcome:42")
    # Other options of the repeat are ignored (priority only where there are priorities).
    caps = app.backend.capabilities
    lowest = -5 if caps.min_priority is None else caps.min_priority + 5
    other = {"priority": lowest} if caps.priorities else {}
    again = await app.enqueue("count", {"n": 2}, key="welcome:42", delay=60, **other)
    assert first.duplicate is False
    assert again.duplicate is True
    assert again.id == first.id
    assert again.payload == {"n": 1}  # the existing job, not the new request
    assert again.state is JobState.QUEUED
    assert total(await app.stats()) == 1
    assert [j.id for j in enqueued] == [first.id]  # no event for the duplicate

    async with worker(app):
        await app.wait(first.id, timeout=WAIT)
        third = await app.enqueue("count", {"n": 3}, key="welcome:42")
        assert third.duplicate is True
        assert third.id == first.id
        assert third.state is JobState.COMPLETED
        sentinel = await app.enqueue("count", "sentinel")
        await app.wait(sentinel.id, timeout=WAIT)
    assert ran == [{"n": 1}, "sentinel"]
    assert (await app.get_job_by_key("welcome:42")).id == first.id


async def test_enqueue_many_with_a_repeated_key(app: Conveyor) -> None:
    counting_app(app)
    jobs = await app.enqueue_many(
        [
            ("count", 1, {"key": "k1"}),
            ("count", 2, {"key": "k2"}),
            ("count", 3, {"key": "k1"}),
            ("count", 4),
        ]
    )
    assert [j.duplicate for j in jobs] == [False, False, True, False]
    assert jobs[2].id == jobs[0].id
    assert jobs[2].payload == 1
    assert len({j.id for j in jobs}) == 3
    assert total(await app.stats()) == 3
    listed = await app.list_jobs()
    assert sorted(j.id for j in listed) == sorted({j.id for j in jobs})


async def test_enqueue_many_key_already_stored(app: Conveyor) -> None:
    counting_app(app)
    existing = await app.enqueue("count", 0, key="k")
    jobs = await app.enqueue_many([("count", 1, {"key": "k"}), ("count", 2, {"key": "other"})])
    assert jobs[0].duplicate is True
    assert jobs[0].id == existing.id
    assert jobs[1].duplicate is False
    assert total(await app.stats()) == 2


async def test_key_of_a_failed_or_cancelled_job_still_counts(app: Conveyor) -> None:
    counting_app(app)
    job = await app.enqueue("count", 0, key="once")
    await app.cancel(job.id)
    again = await app.enqueue("count", 0, key="once")
    assert again.duplicate is True
    assert again.id == job.id
    assert again.state is JobState.CANCELLED


async def test_key_is_free_again_once_the_job_is_purged(app: Conveyor, worker) -> None:
    counting_app(app)
    job = await app.enqueue("count", 0, key="report:2024-01")
    async with worker(app):
        await app.wait(job.id, timeout=WAIT)
    assert await app.purge(JobState.COMPLETED) == 1
    assert await app.get_job_by_key("report:2024-01") is None
    fresh = await app.enqueue("count", 0, key="report:2024-01")
    assert fresh.duplicate is False
    # A new job, not the old one back: a new id, except where the key is the
    # id (BullMQ's jobId), and then it must not be the old record (completed).
    if app.backend.capabilities.key_is_id:
        assert fresh.state is JobState.QUEUED and fresh.payload == 0
    else:
        assert fresh.id != job.id


async def test_key_is_free_again_once_retention_trims_the_job(make_app, worker) -> None:
    app = await make_app(keep_completed=1)
    counting_app(app)
    old = await app.enqueue("count", 0, key="trim-me")
    async with worker(app, concurrency=1):
        await app.wait(old.id, timeout=WAIT)
        newer = await app.enqueue("count", 1)
        await app.wait(newer.id, timeout=WAIT)
    assert await app.get_job(old.id) is None
    fresh = await app.enqueue("count", 2, key="trim-me")
    assert fresh.duplicate is False
    if app.backend.capabilities.key_is_id:  # see test_key_is_free_again_once_the_job_is_purged
        assert fresh.state is JobState.QUEUED and fresh.payload == 2
    else:
        assert fresh.id != old.id


@needs("keys_global")
async def test_keys_are_global_across_names_and_queues(app: Conveyor) -> None:
    counting_app(app)

    @app.job("other", queue="elsewhere")
    async def other(payload: Any) -> None:
        return None

    first = await app.enqueue("count", 0, key="shared")
    second = await app.enqueue("other", 0, key="shared")
    assert second.duplicate is True
    assert second.id == first.id
    assert second.name == "count"


async def test_jobs_without_keys_are_never_duplicates(app: Conveyor) -> None:
    counting_app(app)
    a = await app.enqueue("count", 0)
    b = await app.enqueue("count", 0)
    assert a.id != b.id
    assert not a.duplicate and not b.duplicate
    assert a.key is None


async def test_typed_enqueue_with_key(app: Conveyor) -> None:
    @app.job("typed")
    async def typed(payload: dict) -> None:
        return None

    first = await typed.enqueue({"a": 1}, key="t")
    second = await typed.enqueue({"a": 2}, key="t")
    assert second.duplicate and second.id == first.id


async def test_concurrent_enqueues_of_one_key_store_one_job(app: Conveyor, make_app) -> None:
    """Racing producers: coroutines on this loop, threads through the blocking
    twin (another loop), and, where the backend's storage is shared between
    app objects (a file, a server), a second app: one job, the rest duplicates."""
    counting_app(app)
    other = await make_app()
    counting_app(other)
    probe = await app.enqueue("count", "probe")
    shared = await other.get_job(probe.id) is not None

    producers = [app.enqueue("count", n, key="race") for n in range(10)]
    producers += [asyncio.to_thread(app.enqueue_sync, "count", n, key="race") for n in range(5)]
    if shared:
        producers += [other.enqueue("count", n, key="race") for n in range(10)]
    jobs = await asyncio.gather(*producers)
    assert len({j.id for j in jobs}) == 1
    assert sum(not j.duplicate for j in jobs) == 1
    assert total(await app.stats()) == 2  # the probe and the one keyed job


@needs("ordered", "concurrent_claims")
async def test_a_large_batch_keeps_keys_and_order(app: Conveyor) -> None:
    counting_app(app)
    jobs = await app.enqueue_many([("count", i, {"key": f"k{i}"}) for i in range(2000)])
    assert len({j.id for j in jobs}) == 2000
    again = await app.enqueue_many([("count", i, {"key": f"k{i}"}) for i in range(0, 2000, 7)])
    assert all(j.duplicate for j in again)
    assert [j.id for j in again] == [jobs[i].id for i in range(0, 2000, 7)]
    assert total(await app.stats()) == 2000
    claimed = await app.backend.claim(["default"], 500, 30.0, time.time())
    assert [j.payload for j in claimed] == list(range(500))
