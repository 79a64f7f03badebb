"""conveyor's recurring schedules and Node BullMQ's job schedulers on one
queue (bullmq:// backend, conveyor/backends/bullmq/schedules.py): a
conveyor schedule is a job scheduler Node lists and whose ticks a Node worker
runs; a scheduler Node upserts runs on conveyor workers, each iteration once,
the next one added as Node's worker adds it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.bullmq.schedules import _cron_next

from .conftest import NodeBull

pytestmark = [pytest.mark.bullmq, pytest.mark.slow]


def upsert_add(
    node_bull: NodeBull, spec: dict[str, Any], scheduler: str, repeat: Any, data: Any
) -> str:
    """Node's `queue.upsertJobScheduler` of "add" jobs; the first iteration's id."""
    template = {"name": "add", "data": data}
    made = node_bull(
        spec, command="upsert_scheduler", id=scheduler, repeat=repeat, template=template
    )
    return str(made["id"])


async def test_a_conveyor_schedule_is_a_job_scheduler_node_lists_and_runs(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    app = Conveyor(url)
    app.declare("add", retries=2)  # the handler is Node's
    async with app:
        nightly = await app.recurring(
            "nightly", "add", {"a": 1, "b": 2}, cron="0 9 * * MON-FRI", tz="Europe/Berlin"
        )
        await app.recurring("sums", "add", {"a": 2, "b": 3}, every=1)
        listed = {s["key"]: s for s in node_bull(spec, command="schedulers")["schedulers"]}
        assert set(listed) == {"nightly", "sums"}
        assert nightly.next_run is not None
        assert listed["nightly"]["next"] == round(nightly.next_run.timestamp() * 1000)
        assert (listed["nightly"]["pattern"], listed["nightly"]["tz"]) == (
            "0 9 * * MON-FRI",
            "Europe/Berlin",
        )
        assert listed["nightly"]["name"] == "add"
        assert listed["nightly"]["template"]["data"] == {"a": 1, "b": 2}
        assert listed["nightly"]["template"]["opts"]["attempts"] == 3
        assert listed["sums"]["every"] == 1000

        # A tick conveyor's scheduler fires runs on Node's worker.
        backend: Any = app.backend
        rec = await backend.schedule_get("sums")
        rec.next_run = time.time() - 0.5
        await backend.schedule_put(rec)
        assert await app.scheduler().tick() == 1
        done = node_bull(spec, command="work", count=1, timeout_ms=20_000)["done"]
        assert [(d["data"], d["result"]) for d in done] == [
            ({"a": 2, "b": 3}, {"sum": 5, "by": "node"})
        ]
        ran = await app.get_job(done[0]["id"])
        assert ran is not None and ran.state is JobState.COMPLETED
        assert ran.key is not None and ran.key.startswith("recurring:sums:")

        # Node removes one: conveyor no longer lists it.
        assert node_bull(spec, command="remove_scheduler", id="nightly")["removed"]
        assert [s.name for s in await app.list_recurring()] == ["sums"]


async def test_node_upserting_a_conveyor_schedule_takes_it_over(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    app = Conveyor(url)
    app.declare("add")
    async with app:
        await app.recurring("shared", "add", {"a": 0, "b": 0}, every=3600, catch_up="all")
        first = upsert_add(node_bull, spec, "shared", {"every": 60_000}, {"a": 9, "b": 9})
        (shown,) = await app.list_recurring()
        assert (shown.payload, shown.catch_up, shown.last_run) == ({"a": 9, "b": 9}, "once", None)
        assert shown.every is not None and shown.every.total_seconds() == 60
        # BullMQ ticks it now (its iteration job), not conveyor's scheduler.
        backend: Any = app.backend
        rec = await backend.schedule_get("shared")
        assert await app.scheduler().tick(now=rec.next_run + 5) == 0
        jobs = await app.list_jobs(name="add")
    assert [job.id for job in jobs] == [first]


async def test_a_node_job_scheduler_runs_on_conveyor_workers_once_per_iteration(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    first = upsert_add(node_bull, spec, "every-second", {"every": 1000}, {"a": 1, "b": 1})
    assert first.startswith("repeat:every-second:")
    apps = [Conveyor(url), Conveyor(url)]
    runs: list[str] = []
    for app in apps:

        @app.job("add")
        async def add(payload: dict[str, int], ctx: Any) -> dict[str, Any]:
            runs.append(ctx.job_id)
            return {"sum": payload["a"] + payload["b"], "by": "conveyor"}

    async with apps[0], apps[1]:
        (listed,) = await apps[0].list_recurring()
        assert (listed.name, listed.job_name, listed.payload) == (
            "every-second",
            "add",
            {"a": 1, "b": 1},
        )
        assert listed.every is not None and listed.every.total_seconds() == 1
        # Two workers, both with the scheduler on: it must not fire Node's
        # scheduler itself (its iteration jobs are the ticks).
        async with (
            apps[0].worker(concurrency=2, poll_interval=0.05, scheduler_interval=0.1),
            apps[1].worker(concurrency=2, poll_interval=0.05, scheduler_interval=0.1),
        ):
            await asyncio.sleep(3.5)
        backend: Any = apps[0].backend
        score = await backend._cmd(
            "ZSCORE", f"{spec['prefix']}:{spec['queue']}:repeat", "every-second"
        )
    assert len(runs) == len(set(runs)) >= 2, runs
    ticks = sorted(int(run.rsplit(":", 1)[1]) for run in runs)
    # A late take skips the slots it missed (BullMQ's catch-up), never runs one twice.
    assert all((b - a) % 1000 == 0 for a, b in itertools.pairwise(ticks)), ticks
    # The next iteration waits, as BullMQ keeps it: one delayed job. (Not
    # always the slot after the last run: a job a stopping worker had taken
    # but not started goes back to the queue, its successor already added.)
    assert int(score) > ticks[-1] and (int(score) - ticks[-1]) % 1000 == 0
    pending = node_bull(spec, command="get", ids=[f"repeat:every-second:{int(score)}"])["jobs"]
    assert pending[0] is not None and pending[0]["state"] == "delayed"


async def test_a_node_schedulers_limit_ends_it_on_a_conveyor_worker(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    upsert_add(node_bull, spec, "twice", {"every": 300, "limit": 2}, {"a": 0, "b": 1})
    app = Conveyor(url)
    runs: list[str] = []

    @app.job("add")
    async def add(payload: dict[str, int], ctx: Any) -> None:
        runs.append(ctx.job_id)

    async with app:
        async with app.worker(concurrency=1, poll_interval=0.05):
            await asyncio.sleep(2)
        jobs = await app.list_jobs(name="add", state=JobState.SCHEDULED)
    assert len(runs) == 2, runs
    assert jobs == []  # no third iteration waits


async def test_cancelling_a_node_schedulers_iteration_skips_that_tick_only(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    first = upsert_add(node_bull, spec, "minutely", {"every": 60_000}, {"a": 1, "b": 1})
    app = Conveyor(url)
    app.declare("add")
    async with app:
        assert await app.cancel(first)
        cancelled = await app.get_job(first)
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
        (shown,) = await app.list_recurring()
    assert shown.next_run is not None
    following = f"repeat:minutely:{round(shown.next_run.timestamp() * 1000)}"
    assert following != first
    (pending,) = node_bull(spec, command="get", ids=[following])["jobs"]
    assert pending is not None and pending["state"] == "delayed"


async def test_a_pool_of_node_and_conveyor_workers_runs_each_iteration_once(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    app = Conveyor(url)
    runs: list[str] = []

    @app.job("add")
    async def add(payload: dict[str, int], ctx: Any) -> None:
        runs.append(ctx.job_id)

    ready_key = f"{spec['prefix']}:node-worker-ready"
    stop_key = f"{spec['prefix']}:node-worker-stop"
    completed = f"{spec['prefix']}:{spec['queue']}:completed"
    async with app:
        backend: Any = app.backend
        node = asyncio.create_task(
            asyncio.to_thread(
                node_bull,
                spec,
                command="work",
                count=1000,
                timeout_ms=60_000,
                ready_key=ready_key,
                stop_key=stop_key,
            )
        )
        for _ in range(600):  # Node's start takes seconds on a busy machine
            if await backend._cmd("EXISTS", ready_key):
                break
            await asyncio.sleep(0.05)
        upsert_add(node_bull, spec, "pool", {"every": 500}, {"a": 1, "b": 2})
        async with app.worker(concurrency=2, poll_interval=0.05):
            # Until six iterations ran (by either side), not for a fixed time:
            # on a busy machine a few seconds may see only two.
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                if await backend._cmd("ZCARD", completed) >= 6:
                    break
                await asyncio.sleep(0.1)
            await backend._cmd("SET", stop_key, "1")
            done = (await node)["done"]
    by_node = [d["id"] for d in done]
    every = sorted(int(i.rsplit(":", 1)[1]) for i in runs + by_node)
    assert len(every) == len(set(every)) >= 4, (runs, by_node)
    # On the interval's slots; one taken late skips the slots it missed
    # (BullMQ's catch-up), so a gap is allowed, a second run of one is not.
    assert all((b - a) % 500 == 0 for a, b in itertools.pairwise(every)), every


async def test_a_node_cron_scheduler_goes_on_as_cron_parser_says(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    upsert_add(
        node_bull,
        spec,
        "ny",
        {"pattern": "30 2 * * *", "tz": "America/New_York", "immediately": True},
        {"a": 4, "b": 4},
    )
    app = Conveyor(url)
    results: list[Any] = []

    @app.job("add")
    async def add(payload: dict[str, int]) -> None:
        results.append(payload)

    async with app:
        before = round(time.time() * 1000)
        await app.drain()
        backend: Any = app.backend
        score = await backend._cmd("ZSCORE", f"{spec['prefix']}:{spec['queue']}:repeat", "ny")
    assert results == [{"a": 4, "b": 4}]
    expected = node_bull(
        spec, command="cron_next", pattern="30 2 * * *", tz="America/New_York", after_ms=before
    )["next_ms"]
    assert int(score) == expected


# A Node scheduler's next tick as conveyor's worker computes it and as
# cron-parser does: the same, spring-forward gaps included (there conveyor's
# own schedules follow conveyor's rule; README, "Coming from BullMQ").
AGREEING = [
    ("30 2 * * *", "America/New_York", "2026-03-07T12:00:00"),  # 02:30 skipped
    ("0 * * * *", "America/New_York", "2026-03-08T06:30:00"),  # the hour skipped
    ("30 2,3 * * *", "America/New_York", "2026-03-08T06:50:00"),
    ("30 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00"),  # a 30-minute gap
    ("30 1 * * *", "America/New_York", "2026-10-31T12:00:00"),  # fall-back: first 01:30
    ("0 * * * *", "America/New_York", "2026-11-01T05:30:00"),  # the repeated hour runs
    ("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:50:00"),
    ("0 9 * * MON-FRI", "Europe/Berlin", "2026-01-09T10:00:00"),
    ("0 0 L * *", "UTC", "2026-02-10T00:00:00"),
    ("0 0 1,15 * 1", "UTC", "2026-02-10T00:00:00"),  # day of month OR day of week
    ("0 30 9 * * *", "Asia/Tokyo", "2026-02-10T00:00:00"),  # six fields, seconds 0
]


@pytest.mark.parametrize(("pattern", "tz", "after"), AGREEING)
def test_conveyor_computes_a_node_schedulers_next_tick_as_cron_parser(
    pattern: str, tz: str, after: str, bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    _, spec = bull_queue
    after_ms = round(datetime.fromisoformat(after).replace(tzinfo=UTC).timestamp() * 1000)
    node = node_bull(spec, command="cron_next", pattern=pattern, tz=tz, after_ms=after_ms)
    assert _cron_next(pattern, tz, None, after_ms) == node["next_ms"], json.dumps(node)
