"""A producer declares, a worker with the handler runs (issue 8, point 2).

The producer's app has only `app.declare(...)` for the job type: it validates
and enqueues with the declared defaults, and a worker of that app never claims
the declared-only name (nor serves its queue), even when a backend hands it
such a job; a worker of an app that registers the handler runs it, and the
typed handle gives its result back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from conveyor import Conveyor, JobContext, JobState, Worker

from .conftest import MakeApp, needs
from .helpers import WAIT
from .test_rolling_deploy import ignore_names

pytestmark = needs("lookup")


class Welcome(BaseModel):
    to: str
    name: str


async def same_store(make_app: MakeApp, first: Conveyor, backend_name: str) -> Conveyor:
    """A second app on the storage of `first`, as a second process would have."""
    if backend_name == "memory":  # every memory:// URL is a store of its own
        return await make_app(backend=first.backend)
    return await make_app()


async def producer_and_consumer(
    make_app: MakeApp, backend_name: str, queue: str
) -> tuple[Conveyor, Conveyor]:
    """`producer` declares email.welcome and registers `ping`; `consumer` has
    the handler of email.welcome."""
    producer = await make_app()
    consumer = await same_store(make_app, producer, backend_name)
    producer.declare("email.welcome", Welcome, retries=2, timeout=20, priority=0, queue=queue)

    @producer.job("ping", queue=queue)
    async def ping(payload: Any) -> str:
        return "pong"

    @consumer.job("email.welcome", retries=2, timeout=20, priority=0, queue=queue)
    async def welcome(payload: Welcome, ctx: JobContext) -> dict[str, str]:
        return {"sent": payload.to}

    return producer, consumer


@needs("concurrent_claims")
async def test_a_declared_job_waits_for_a_worker_with_its_handler(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    producer, consumer = await producer_and_consumer(make_app, backend_name, "default")
    declared = producer.declare("email.welcome", Welcome, retries=2, timeout=20, queue="default")
    job = await declared.enqueue(Welcome(to="a@b.c", name="A"))
    assert (job.max_retries, job.timeout) == (2, 20.0)
    async with worker(producer) as producing:
        assert producing.names == ("ping",)
        # `ping` is behind the declared job (FIFO): once it has run, the
        # producer's worker has had its chance to claim the declared one.
        ping = await producer.enqueue("ping")
        assert (await producer.wait(ping.id, timeout=WAIT)).state is JobState.COMPLETED
        waiting = await producer.get_job(job.id)
        assert waiting is not None
        assert (waiting.state, waiting.attempts) == (JobState.QUEUED, 0)
        assert await producer.unserved() == {"default": {"email.welcome": 1}}
        async with worker(consumer):
            # Where claims cannot ask by name (SQS), the producer's worker
            # keeps receiving the message too and hides it for a moment each
            # time: the consumer gets it once it wins the race, which a busy
            # machine can make it lose for a while.
            assert await declared.result(job, timeout=2 * WAIT) == {"sent": "a@b.c"}
    done = await producer.get_job(job.id)
    assert done is not None and (done.state, done.attempts) == (JobState.COMPLETED, 1)


async def test_a_declared_types_queue_is_not_served_without_its_handler(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    producer, consumer = await producer_and_consumer(make_app, backend_name, "mail")
    job = await producer.enqueue("email.welcome", {"to": "a@b.c", "name": "A"})
    assert (job.queue, job.max_retries) == ("mail", 2)
    assert producer.worker().queues == ("default", "mail")  # `ping` is in "mail" too
    producer.registry.pop("ping")
    assert producer.worker().queues == ("default",)
    async with worker(consumer):
        done = await consumer.wait(job.id, timeout=WAIT)
    assert (done.state, done.result) == (JobState.COMPLETED, {"sent": "a@b.c"})


@needs("claims_by_name")
async def test_a_worker_hands_back_a_declared_job_a_backend_gave_it_anyway(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    producer, consumer = await producer_and_consumer(make_app, backend_name, "default")
    job = await producer.enqueue("email.welcome", {"to": "a@b.c", "name": "A"})
    ping = await producer.enqueue("ping")
    # The first claim ignores names, as a backend that cannot filter by them
    # would: it takes the declared job, at the head of the queue.
    ignore_names(producer, calls=1)
    async with worker(producer, concurrency=1):
        assert (await producer.wait(ping.id, timeout=WAIT)).state is JobState.COMPLETED
        waiting = await producer.get_job(job.id)
        assert waiting is not None
        assert (waiting.state, waiting.attempts, waiting.error) == (JobState.QUEUED, 0, None)
    async with worker(consumer):
        assert (await consumer.wait(job.id, timeout=WAIT)).state is JobState.COMPLETED
