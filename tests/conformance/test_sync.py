"""Sync code: plain `def` handlers run in a thread pool without blocking the
event loop, and every producer/admin call has a blocking `_sync` twin for
code without an event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from conveyor import Conveyor, ConveyorError, JobContext, JobState

from .conftest import needs
from .helpers import WAIT, wait_thread_event

pytestmark = needs("lookup")


@needs("concurrent_claims")
async def test_sync_handlers_run_in_threads_concurrently(app: Conveyor, worker) -> None:
    barrier = threading.Barrier(2, timeout=10)
    threads: list[str] = []

    @app.job("blocking", timeout=None, retries=0)
    def blocking(payload: int) -> int:
        threads.append(threading.current_thread().name)
        barrier.wait()  # only returns if both jobs run at the same time
        return payload

    jobs = [await app.enqueue("blocking", i) for i in range(2)]
    async with worker(app, concurrency=2):
        done = [await app.wait(j.id, timeout=WAIT) for j in jobs]
    assert [d.state for d in done] == [JobState.COMPLETED] * 2, [d.error for d in done]
    assert threading.main_thread().name not in threads
    assert len(set(threads)) == 2


async def test_sync_handler_does_not_block_the_loop(app: Conveyor, worker) -> None:
    entered = threading.Event()
    release = threading.Event()

    @app.job("blocking", timeout=None)
    def blocking(payload: Any) -> str:
        entered.set()
        if not release.wait(10):
            raise AssertionError("never released")
        return "released"

    job = await app.enqueue("blocking", {})
    async with worker(app):
        await wait_thread_event(entered)
        # the loop still runs: timers fire, the backend answers, other jobs run
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5
        assert (await app.get_job(job.id)).state is JobState.RUNNING

        @app.job("async_meanwhile")
        async def meanwhile(payload: Any) -> str:
            return "ran meanwhile"

        other = await app.enqueue("async_meanwhile", {})
        assert (await app.wait(other.id, timeout=WAIT)).result == "ran meanwhile"
        release.set()
        done = await app.wait(job.id, timeout=WAIT)
    assert done.result == "released"


async def test_blocking_twins_from_a_plain_thread(app: Conveyor, worker) -> None:
    @app.job("double")
    def double(payload: int, ctx: JobContext) -> int:
        return payload * 2

    def producer() -> dict[str, Any]:
        # a plain thread: no event loop, the way Django or Flask code calls it
        job = app.enqueue_sync("double", 21, key="twin")
        dup = app.enqueue_sync("double", 99, key="twin")
        many = app.enqueue_many_sync([("double", 1), ("double", 2)])
        typed = double.enqueue_sync(5)
        typed_many = double.enqueue_many_sync([6, 7])
        return {
            "job": job,
            "dup": dup,
            "many": many,
            "typed": typed,
            "typed_many": typed_many,
            "got": app.get_job_sync(job.id),
            "by_key": app.get_job_by_key_sync("twin"),
            "stats": app.stats_sync(),
            "listed": app.list_jobs_sync(state=JobState.QUEUED, limit=100),
        }

    out = await asyncio.to_thread(producer)
    assert out["dup"].duplicate and out["dup"].id == out["job"].id
    assert out["got"].id == out["job"].id and out["got"].state is JobState.QUEUED
    assert out["by_key"].id == out["job"].id
    assert out["stats"]["default"]["queued"] == 6
    assert len(out["listed"]) == 6

    all_ids = [
        out["job"].id,
        *(j.id for j in out["many"]),
        out["typed"].id,
        *(j.id for j in out["typed_many"]),
    ]
    async with worker(app):
        results = await asyncio.to_thread(
            lambda: [app.wait_sync(i, timeout=WAIT).result for i in all_ids]
        )
    assert results == [42, 2, 4, 10, 12, 14]


async def test_blocking_admin_twins(app: Conveyor, worker) -> None:
    @app.job("bad", retries=0)
    def bad(payload: Any) -> None:
        raise RuntimeError("bad")

    @app.job("ok")
    def ok(payload: Any) -> str:
        return "ok"

    failing = await app.enqueue("bad", {})
    async with worker(app):
        await app.wait(failing.id, timeout=WAIT)
    pending = await app.enqueue("ok", {}, delay=3600)

    def admin() -> tuple[Any, ...]:
        cancelled = app.cancel_sync(pending.id)
        retried = app.retry_sync(failing.id)
        purged = app.purge_sync(JobState.CANCELLED)
        return cancelled, retried, purged

    cancelled, retried, purged = await asyncio.to_thread(admin)
    assert cancelled is True
    assert retried.state is JobState.QUEUED
    assert purged == 1
    assert await app.get_job(pending.id) is None


async def test_wait_sync_times_out(app: Conveyor) -> None:
    from conveyor import JobTimeoutError

    @app.job("ok")
    def ok(payload: Any) -> None:
        return None

    job = await app.enqueue("ok", {})
    with pytest.raises(JobTimeoutError):
        await asyncio.to_thread(app.wait_sync, job.id, timeout=0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda app: app.enqueue_sync("ok", {}),
        lambda app: app.enqueue_many_sync([("ok", {})]),
        lambda app: app.get_job_sync("x"),
        lambda app: app.stats_sync(),
        lambda app: app.wait_sync("x", timeout=1),
        lambda app: app.list_jobs_sync(),
        lambda app: app.cancel_sync("x"),
        lambda app: app.retry_sync("x"),
        lambda app: app.purge_sync(),
        lambda app: app.registry["ok"].enqueue_sync({}),
    ],
)
async def test_blocking_twin_inside_a_running_loop_is_refused(app: Conveyor, call) -> None:
    @app.job("ok")
    def ok(payload: Any) -> None:
        return None

    with pytest.raises(ConveyorError, match=r"running event loop.*await"):
        call(app)
    # and nothing was stored
    assert all(not any(c.values()) for c in (await app.stats()).values())
