"""SQS with a store, against moto's server: what the store-side sweeps do.

* A message the redrive policy moved to the dead-letter queue fails its job
  in the store, saying why.
* A queued job SQS holds no message for (a producer stopped between the
  store and SQS) is sent again once the queue is idle.
* A send SQS refuses leaves no job behind to run later: the caller is told
  which jobs were not enqueued, and the store has them cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from conveyor import Conveyor, EnqueueFailedError, JobState
from conveyor.backends.base import NewJob, Retention
from conveyor.backends.broker import stored
from conveyor.backends.sqs.stored import SQSStoredBackend

pytestmark = pytest.mark.sqs


def _app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.job("work")
    async def work(payload: dict[str, int]) -> None:
        return None

    return app


async def test_a_dead_lettered_message_fails_its_job_in_the_store(
    sqs_urls: Callable[[], str],
) -> None:
    # One receive allowed: the second delivery goes to the dead-letter queue.
    url = sqs_urls().replace("&create=true", "&create=true&max_receives=1")
    async with _app(url) as app:
        backend = app.backend
        assert isinstance(backend, SQSStoredBackend)
        job = await app.enqueue("work", {"n": 1})
        (claimed,) = await backend.claim(["default"], 1, 1.0)
        assert claimed.id == job.id
        await asyncio.sleep(1.5)  # the lease (visibility timeout) runs out unacknowledged
        assert await backend.claim(["default"], 1, 1.0) == []  # SQS moved it aside
        await backend.recover_expired(None, 5, Retention())
        failed = await app.get_job(job.id)
        assert failed is not None and failed.state is JobState.FAILED
        assert failed.error is not None and "dead-letter queue" in failed.error
        # Retried from the store, it is sent again and runs.
        assert await app.retry(job.id) is not None
        (again,) = await backend.claim(["default"], 1, 30.0)
        assert again.id == job.id


async def test_a_queued_job_without_a_message_is_sent_again_when_the_queue_is_idle(
    sqs_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stored, "RECONCILE_AGE", 0.5)
    async with _app(sqs_urls()) as app:
        backend = app.backend
        assert isinstance(backend, SQSStoredBackend)
        now = time.time()
        # Written to the store only, as by a producer killed before its send.
        (lost,) = await backend.store.enqueue(
            [NewJob("lost-1", "work", "default", "{}", 0, 3, None, None, now, now)]
        )
        assert lost.state is JobState.QUEUED
        assert await backend.claim(["default"], 1, 30.0) == []
        await asyncio.sleep(0.6)
        backend._reconciled_at -= stored.RECONCILE_EVERY  # the next sweep is due
        await backend.recover_expired(None, 5, Retention())
        (found,) = await backend.claim(["default"], 1, 30.0)
        assert found.id == "lost-1"


async def test_jobs_sqs_refuses_are_reported_and_cancelled_in_the_store(
    sqs_urls: Callable[[], str],
) -> None:
    async with _app(sqs_urls()) as app:
        backend = app.backend
        assert isinstance(backend, SQSStoredBackend)
        await app.enqueue("work", {"n": 0})  # resolves and caches the queue's URL
        # The queue disappears under the producer (deleted by an operator).
        queue_url = await backend.sqs.queue_url(backend.config.queue)
        await backend.sqs.call("delete_queue", QueueUrl=queue_url)
        with pytest.raises(EnqueueFailedError) as refused:
            await app.enqueue_many([("work", {"n": n}) for n in range(3)])
        assert len(refused.value.failed) == 3
        for job_id in refused.value.failed:
            job = await app.get_job(job_id)
            assert job is not None and job.state is JobState.CANCELLED


async def test_a_failing_sweep_does_not_hide_the_jobs_the_store_recovered(
    sqs_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _app(sqs_urls()) as app:
        backend = app.backend
        assert isinstance(backend, SQSStoredBackend)
        job = await app.enqueue("work", {"n": 1})
        await backend.claim(["default"], 1, 1.0)

        async def broken(*args: object) -> None:
            raise ConnectionError("SQS unreachable (injected)")

        monkeypatch.setattr(backend, "_sweep_dead_letters", broken)
        (recovered,) = await backend.recover_expired(time.time() + 5, 5, Retention())
        assert recovered.id == job.id
