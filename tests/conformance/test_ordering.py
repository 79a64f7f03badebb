"""Priority then FIFO, and queues (DESIGN section 2: "Priority: lower number
runs first (default 0); FIFO within a priority")."""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor, JobState

from .conftest import needs
from .helpers import WAIT, wait_state

pytestmark = needs("lookup")


def recording_app(app: Conveyor, **options: Any) -> list[Any]:
    ran: list[Any] = []

    @app.job("record", **options)
    async def record(payload: Any) -> None:
        ran.append(payload)

    return ran


@needs("priorities", "ordered", "negative_priorities")
async def test_lower_priority_number_runs_first_then_fifo(app: Conveyor, worker) -> None:
    ran = recording_app(app)
    plan = [(5, "a"), (0, "b"), (5, "c"), (-1, "d"), (0, "e"), (5, "f"), (-1, "g"), (0, "h")]
    jobs = [await app.enqueue("record", label, priority=prio) for prio, label in plan]
    assert all(job.state is JobState.QUEUED for job in jobs)

    async with worker(app, concurrency=1):
        for job in jobs:
            await app.wait(job.id, timeout=WAIT)

    expected = [label for _, label in sorted(plan, key=lambda p: p[0])]  # stable sort: FIFO
    assert ran == expected == ["d", "g", "b", "e", "h", "a", "c", "f"]


@needs("ordered")
async def test_fifo_within_one_priority_for_a_batch(app: Conveyor, worker) -> None:
    ran = recording_app(app)
    jobs = await app.enqueue_many([("record", i) for i in range(20)])
    async with worker(app, concurrency=1):
        for job in jobs:
            await app.wait(job.id, timeout=WAIT)
    assert ran == list(range(20))


@needs("priorities", "ordered", "negative_priorities")
async def test_priority_in_a_batch_and_type_default(app: Conveyor, worker) -> None:
    ran: list[str] = []

    @app.job("urgent", priority=-10)
    async def urgent(payload: str) -> None:
        ran.append(payload)

    @app.job("normal")
    async def normal(payload: str) -> None:
        ran.append(payload)

    jobs = await app.enqueue_many(
        [
            ("normal", "n1"),
            ("normal", "n2", {"priority": 3}),
            ("urgent", "u1"),
            ("normal", "n3", {"priority": -20}),
            ("urgent", "u2", {"priority": 0}),  # per-job option beats the type default
        ]
    )
    assert [j.priority for j in jobs] == [0, 3, -10, -20, 0]
    async with worker(app, concurrency=1):
        for job in jobs:
            await app.wait(job.id, timeout=WAIT)
    assert ran == ["n3", "u1", "n1", "u2", "n2"]


async def test_per_job_queue_option_and_type_default_queue(app: Conveyor) -> None:
    @app.job("mail", queue="emails")
    async def mail(payload: Any) -> None:
        return None

    by_default = await app.enqueue("mail", {})
    overridden = await app.enqueue("mail", {}, queue="bulk")
    assert by_default.queue == "emails"
    assert overridden.queue == "bulk"
    assert (await app.get_job(overridden.id)).queue == "bulk"
    stats = await app.stats()
    assert stats["emails"]["queued"] == 1
    assert stats["bulk"]["queued"] == 1


async def test_worker_restricted_to_a_queue_leaves_other_queues_alone(
    app: Conveyor, worker
) -> None:
    ran = recording_app(app)
    in_b = await app.enqueue("record", "b", queue="b")
    in_a = await app.enqueue("record", "a", queue="a")

    async with worker(app, queues=["a"]):
        done = await app.wait(in_a.id, timeout=WAIT)
        assert done.state is JobState.COMPLETED
    assert ran == ["a"]
    assert (await app.get_job(in_b.id)).state is JobState.QUEUED

    async with worker(app, queues=["b"]):
        done = await app.wait(in_b.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert ran == ["a", "b"]


@needs("priorities")
async def test_worker_on_several_queues_takes_by_priority_across_them(
    app: Conveyor, worker
) -> None:
    ran = recording_app(app)
    jobs = [
        await app.enqueue("record", "x-low", queue="x", priority=9),
        await app.enqueue("record", "y-high", queue="y", priority=1),
        await app.enqueue("record", "x-high", queue="x", priority=1),
        await app.enqueue("record", "y-top", queue="y", priority=0),
    ]
    async with worker(app, concurrency=1, queues=["x", "y"]):
        for job in jobs:
            await app.wait(job.id, timeout=WAIT)
    assert ran == ["y-top", "y-high", "x-high", "x-low"]


async def test_default_worker_serves_the_queues_of_registered_types(app: Conveyor, worker) -> None:
    ran = recording_app(app, queue="special")
    job = await app.enqueue("record", "s")
    assert job.queue == "special"
    async with worker(app):
        await wait_state(app, job.id, JobState.COMPLETED)
    assert ran == ["s"]
