"""SQS with a store, against moto's server: what the store-side sweeps do.

* The store, not the redrive policy, counts a job's attempts and stalls: a
  job whose message was dead-lettered is failed by the store's count (and
  the dead letter dropped), or sent again while the store still has it
  queued (its receives were hides by workers without its handler).
* A send SQS refuses leaves no job behind to run later: the caller is told
  which jobs were not enqueued, and the store withdraws them (their keys
  are free for the caller's retry).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from conveyor import Conveyor, EnqueueFailedError, JobState
from conveyor.backends.base import Retention
from conveyor.backends.broker import bare, stored
from conveyor.backends.sqs.stored import SQSStoredBackend

pytestmark = pytest.mark.sqs


def _app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.job("work")
    async def work(payload: dict[str, int]) -> None:
        return None

    return app


async def test_a_job_whose_worker_died_fails_by_the_stores_count_and_its_dead_letter_goes(
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
        # The store counts the stall and, at max_stalled=0, fails the job; the
        # sweep then drops its dead letter.
        await backend.recover_expired(None, 0, Retention())
        failed = await app.get_job(job.id)
        assert failed is not None and failed.state is JobState.FAILED
        assert failed.error is not None and "lease" in failed.error, failed.error
        dlq = await backend.broker.dead_letter_queue(backend.config.queue)
        assert dlq is not None
        counts = await backend.broker.counts(dlq)
        assert not any(counts.values()), counts
        # Retried from the store, it is sent again and runs.
        assert await app.retry(job.id) is not None
        (again,) = await backend.claim(["default"], 1, 30.0)
        assert again.id == job.id


async def test_a_job_hidden_until_its_message_was_dead_lettered_is_sent_again_not_failed(
    sqs_urls: Callable[[], str],
) -> None:
    """Receives that were not attempts (a worker without the job's handler
    hid its message, in a rolling deploy) used up maxReceiveCount: SQS moved
    the message aside although the job never ran. The store, which counts
    the real attempts and stalls, still has it queued: it is sent again."""
    url = sqs_urls().replace("&create=true", "&create=true&max_receives=1")
    async with _app(url) as app:
        backend = app.backend
        assert isinstance(backend, SQSStoredBackend)
        job = await app.enqueue("work", {"n": 1})
        # A worker of an older release: no handler for "work", so it hides it.
        assert await backend.claim(["default"], 1, 30.0, names=["older"]) == []
        await asyncio.sleep(bare.UNKNOWN_NAME_HIDE + 0.3)
        assert await backend.claim(["default"], 1, 30.0, names=["older"]) == []  # moved aside
        backend._swept_at -= stored.SWEEP_EVERY  # the next sweep is due
        await backend.recover_expired(None, 5, Retention())
        waiting = await app.get_job(job.id)
        assert waiting is not None and waiting.state is JobState.QUEUED, waiting
        (claimed,) = await backend.claim(["default"], 1, 30.0, names=["work"])
        assert claimed.id == job.id
        assert claimed.attempts == 1  # the hides cost it nothing


async def test_jobs_sqs_refuses_are_reported_and_withdrawn_from_the_store(
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
            assert await app.get_job(job_id) is None  # withdrawn: nothing to run later


async def test_a_keyed_job_sqs_refused_can_be_enqueued_again_with_its_key(
    sqs_urls: Callable[[], str],
) -> None:
    """The caller was told the job was not enqueued; its retry with the same
    idempotency key must enqueue it, not return the refused one as a duplicate."""
    async with _app(sqs_urls()) as app:
        backend = app.backend
        assert isinstance(backend, SQSStoredBackend)
        await app.enqueue("work", {"n": 0})  # resolves and caches the queue's URL
        queue_url = await backend.sqs.queue_url(backend.config.queue)
        await backend.sqs.call("delete_queue", QueueUrl=queue_url)
        with pytest.raises(EnqueueFailedError):
            await app.enqueue("work", {"n": 1}, key="order:1")
        await backend.sqs.call("create_queue", QueueName=backend.config.queue)
        job = await app.enqueue("work", {"n": 1}, key="order:1")
        assert not job.duplicate
        (claimed,) = await backend.claim(["default"], 1, 30.0)
        assert claimed.id == job.id


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
