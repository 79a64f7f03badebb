"""SQS FIFO with a store (moto's server): a job sent again for the same
attempt gets a deduplication id of its own and keeps its group."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, JobState

pytestmark = [pytest.mark.sqs, pytest.mark.sqs_fifo]


async def test_retry_of_a_cancelled_job_is_sent_again_within_the_dedup_window(
    sqs_fifo_urls: Callable[[], str],
) -> None:
    app = Conveyor(sqs_fifo_urls())

    @app.job("work")
    async def work(payload: Any) -> None:
        return None

    async with app:
        backend: Any = app.backend
        job = await app.enqueue("work", {}, group="customer-7")
        assert await app.cancel(job.id)
        # Its first message comes back and is dropped: the job is cancelled.
        assert await backend.claim(["default"], 1, 30.0) == []
        again = await app.retry(job.id)
        assert again is not None and again.state is JobState.QUEUED
        # Sent again at once, well within SQS's 5-minute deduplication window.
        queue = backend.broker_queue("default")
        (message,) = await backend.broker.receive(queue, 1, 1, 30)
        body = json.loads(message.body)
        assert body["id"] == job.id
        assert body.get("group") == "customer-7"
