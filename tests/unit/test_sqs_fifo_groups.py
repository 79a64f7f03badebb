"""A bare SQS FIFO queue (moto's server): a retry is the same message hidden
for its backoff, and the group's later messages, held by the backend while
the first ran, go back behind it, so they do not run before the retry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, JobContext

pytestmark = [pytest.mark.sqs, pytest.mark.sqs_fifo]


async def test_a_job_retried_after_a_backoff_runs_before_the_rest_of_its_group(
    sqs_fifo_bare_urls: Callable[[], str],
) -> None:
    app = Conveyor(sqs_fifo_bare_urls())
    ran: list[tuple[int, int]] = []
    done = asyncio.Event()

    @app.job("step", retries=1, backoff=1.0)
    async def step(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append((payload["n"], ctx.attempt))
        if payload["n"] == 0 and ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        if len(ran) == 4:
            done.set()

    async with app:
        for n in range(3):
            await app.enqueue("step", {"n": n}, group="a")
        async with app.worker(concurrency=4, lease=5.0, poll_interval=0.05):
            await asyncio.wait_for(done.wait(), 15.0)
    assert [n for n, _ in ran] == [0, 0, 1, 2]
    assert ran[:2] == [(0, 1), (0, 2)]
