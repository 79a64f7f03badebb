"""Groups (`enqueue(..., group=...)`, capability `groups`): the jobs of one
group run one at a time, in the order they were enqueued, even on a worker
with many free slots; other groups' jobs are not held behind them. On SQS
FIFO queues these are message groups, on ordered Pub/Sub ordering keys.

A single receive there can bring several messages of one group: the backend
hands out the first and holds the rest until it is settled (see
conveyor/backends/broker/groups.py). These tests wait on what the handlers
record, not on `app.wait`, so that they run without a store too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import Conveyor, JobContext

from .conftest import MakeApp, needs
from .helpers import eventually, wait_event

pytestmark = needs("groups")


async def test_a_groups_jobs_run_one_at_a_time_in_order(app: Conveyor, worker) -> None:
    ran: dict[str, list[int]] = {"a": [], "b": []}
    running: dict[str, int] = {"a": 0, "b": 0}
    overlaps: list[str] = []

    @app.job("step")
    async def step(payload: dict[str, Any]) -> None:
        group = payload["group"]
        running[group] += 1
        if running[group] > 1:
            overlaps.append(f"{group}{payload['n']}")
        await asyncio.sleep(0.05)  # long enough for a second claim to overlap
        ran[group].append(payload["n"])
        running[group] -= 1

    for n in range(5):
        for group in ("a", "b"):
            await app.enqueue("step", {"group": group, "n": n}, group=group)
    async with worker(app, concurrency=4):
        await eventually(lambda: sum(map(len, ran.values())) == 10, message="10 runs")
    assert overlaps == []
    assert ran == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2, 3, 4]}


async def test_a_retried_job_runs_again_before_the_rest_of_its_group(app: Conveyor, worker) -> None:
    """The first job fails once and is retried at once (no backoff): its
    retry comes before the group's later jobs, which the backend held while
    the first ran."""
    ran: list[tuple[int, int]] = []

    @app.job("step", retries=1, backoff=0)
    async def step(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append((payload["n"], ctx.attempt))
        if payload["n"] == 0 and ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        await asyncio.sleep(0.05)

    for n in range(4):
        await app.enqueue("step", {"n": n}, group="a")
    async with worker(app, concurrency=4):
        await eventually(lambda: len(ran) == 5, message="5 runs")
    # (Without a store the later jobs' attempts are the broker's receive
    # counts, which their return to the broker with the retry counted.)
    assert [n for n, _ in ran] == [0, 0, 1, 2, 3]
    assert ran[:2] == [(0, 1), (0, 2)]


@pytest.mark.parametrize("first", ["completes", "is handed back"])
async def test_a_stopping_worker_gives_its_groups_held_jobs_back_at_once(
    app: Conveyor, make_app: MakeApp, worker, first: str
) -> None:
    """A worker stops while a group's first job runs and the group's later
    jobs, received with it, wait in the backend: they go back to the broker
    at once, in order (not when their 30-second lease ends), whether the
    first job completes during the stop or is handed back."""
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    @app.job("step")
    async def step(payload: dict[str, Any]) -> None:
        ran.append(f"first worker: {payload['n']}")
        if payload["n"] == 0:
            started.set()
            await release.wait()

    for n in range(3):
        await app.enqueue("step", {"n": n}, group="a")
    completes = first == "completes"
    stopping = worker(app, concurrency=4, lease=30.0, shutdown_timeout=5.0 if completes else 0.2)
    await stopping.start()
    await wait_event(started)
    stop = asyncio.ensure_future(stopping.stop())
    await asyncio.sleep(0.3)  # stopping: no more claims; the first job still runs
    release.set()
    await stop

    # Another process's worker (an app of its own, on the same queue).
    other = await make_app()

    @other.job("step")
    async def step_elsewhere(payload: dict[str, Any]) -> None:
        ran.append(f"second worker: {payload['n']}")

    rest = [1, 2] if completes else [0, 1, 2]
    async with worker(other, concurrency=4):
        # Well within the lease (30 s): the held jobs were given back, not
        # left to expire. 20 s, not 10: in CI six suites share two cores, and
        # one run fell short of 10 s.
        await eventually(lambda: len(ran) == 1 + len(rest), timeout=20.0, message="the rest")
    assert ran == ["first worker: 0"] + [f"second worker: {n}" for n in rest]
