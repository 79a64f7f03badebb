"""Brokers with a store, against their real servers (moto's SQS, gcloud's
Pub/Sub emulator): a queued job the broker holds no message for (a producer
killed between writing the store and sending) is sent again once the queue
is idle. SQS says so by its message counts; Pub/Sub counts nothing, so there
the worker's own receives say it: the last one on the queue came back empty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.base import NewJob, Retention
from conveyor.backends.broker import stored
from conveyor.backends.broker.stored import StoredBrokerBackend


@pytest.mark.parametrize(
    "urls",
    [
        pytest.param("sqs_urls", marks=pytest.mark.sqs, id="sqs"),
        pytest.param("pubsub_urls", marks=pytest.mark.pubsub, id="pubsub"),
    ],
)
async def test_a_queued_job_without_a_message_is_sent_again_once_the_queue_is_idle(
    urls: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stored, "RECONCILE_AGE", 0.5)
    make: Callable[[], str] = request.getfixturevalue(urls)
    app = Conveyor(make())

    @app.job("work")
    async def work(payload: dict[str, int]) -> None:
        return None

    async with app:
        backend = app.backend
        assert isinstance(backend, StoredBrokerBackend)
        now = time.time()
        # Written to the store only, as by a producer killed before its send.
        (lost,) = await backend.store.enqueue(
            [NewJob("lost-1", "work", "default", "{}", 0, 3, None, None, now, now)]
        )
        assert lost.state is JobState.QUEUED
        assert await backend.claim(["default"], 1, 30.0) == []  # the queue is idle
        await asyncio.sleep(0.6)
        backend._reconciled_at -= stored.RECONCILE_EVERY  # the next sweep is due
        await backend.recover_expired(None, 5, Retention())
        found = []
        for _ in range(20):  # Pub/Sub's emulator may take a pull or two
            found = await backend.claim(["default"], 1, 30.0)
            if found:
                break
        assert [job.id for job in found] == ["lost-1"]
