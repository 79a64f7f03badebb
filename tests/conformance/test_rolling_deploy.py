"""Rolling deploys: workers of different versions share one backend (issue 7, point 4).

A worker claims only the job names it has handlers for, so an old worker
leaves new job types queued (no attempt counted) for a worker that knows them;
unknown-type jobs ahead in the queue never delay the ones it knows; ordering
(priority, then FIFO) holds among the names it serves; and `workers()` /
`unserved()` show who serves what, so a job nobody can run is visible.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, JobState, Worker

from .conftest import MakeApp, needs
from .helpers import WAIT

pytestmark = needs("lookup")

Q = ["default"]


async def same_store(make_app: MakeApp, first: Conveyor, backend_name: str) -> Conveyor:
    """A second app on the storage of `first`, as a second process would have.
    (Every memory:// URL is a store of its own, so there the object is shared.)"""
    if backend_name == "memory":
        return await make_app(backend=first.backend)
    return await make_app()


def register(app: Conveyor, names: str, ran: list[tuple[str, Any]], label: str) -> None:
    """Register each job name in `names` ("AB": A and B) on `app`; each handler
    records (label, payload) in `ran`."""
    for name in names:

        @app.job(name, retries=0)
        async def handler(payload: Any) -> None:
            ran.append((label, payload))


async def old_and_new(make_app: MakeApp, backend_name: str) -> tuple[Conveyor, Conveyor, list]:
    """`old` serves job type A; `new` (also the producer) serves A and B."""
    ran: list[tuple[str, Any]] = []
    old = await make_app()
    new = await same_store(make_app, old, backend_name)
    register(old, "A", ran, "old")
    register(new, "AB", ran, "new")
    return old, new, ran


def ignore_names(app: Conveyor, calls: int | None = None) -> None:
    """Make the app's backend claim as if the caller had passed names=None, for
    the first `calls` claims (None: always), as a backend that cannot filter
    by name would: the worker must cope with a job it has no handler for."""
    backend = app.backend
    left = [calls]

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        async def claim(*args: Any, **kwargs: Any) -> Any:
            if left[0] is None or left[0] > 0:
                if left[0] is not None:
                    left[0] -= 1
                kwargs.pop("names", None)
            return await method(*args, **kwargs)

        return claim

    for attr in ("claim", "finish_and_claim", "claim_blocking"):
        if hasattr(backend, attr):
            setattr(backend, attr, wrap(getattr(backend, attr)))


# --------------------------------------------------------------------------- (1)


@needs("claims_by_name")
async def test_old_worker_leaves_a_new_job_type_queued_for_a_new_worker(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    old, new, ran = await old_and_new(make_app, backend_name)
    b_jobs = await new.enqueue_many([("B", n) for n in range(5)])
    async with worker(old, concurrency=2):
        # A jobs behind the B jobs (FIFO): once each has run on the old
        # worker, that worker has had every chance to claim the B jobs.
        for round_ in range(3):
            a = await new.enqueue("A", f"a{round_}")
            assert (await new.wait(a.id, timeout=WAIT)).state is JobState.COMPLETED
        for job in b_jobs:
            stored = await new.get_job(job.id)
            assert stored is not None
            assert (stored.state, stored.attempts, stored.error) == (JobState.QUEUED, 0, None)
        async with worker(new, concurrency=2):
            for job in b_jobs:
                done = await new.wait(job.id, timeout=WAIT)
                assert (done.state, done.attempts) == (JobState.COMPLETED, 1)
    assert sorted(payload for label, payload in ran if label == "new") == list(range(5))
    assert all(payload not in range(5) for label, payload in ran if label == "old")


# --------------------------------------------------------------------------- (2)


@needs("claims_by_name")
async def test_a_known_job_behind_many_unknown_ones_is_claimed_at_once(app: Conveyor) -> None:
    ran: list[tuple[str, Any]] = []
    register(app, "AB", ran, "producer")
    await app.enqueue_many([("B", n) for n in range(1000)])
    a = await app.enqueue("A", "known")
    claimed = await app.backend.claim(Q, 1, 30.0, time.time(), names=["A"])
    assert [job.id for job in claimed] == [a.id]
    assert await app.backend.claim(Q, 5, 30.0, time.time(), names=["A"]) == []
    assert (await app.stats())["default"]["queued"] == 1000


@needs("claims_by_name")
async def test_a_worker_skips_unknown_jobs_ahead_of_the_ones_it_knows(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    old, new, _ = await old_and_new(make_app, backend_name)
    await new.enqueue_many([("B", n) for n in range(300)])
    a = await new.enqueue("A", "known")
    async with worker(old, concurrency=1):
        assert (await new.wait(a.id, timeout=WAIT)).state is JobState.COMPLETED
    counts = (await new.stats())["default"]
    assert (counts["queued"], counts["scheduled"], counts["failed"]) == (300, 0, 0)
    assert {job.attempts for job in await new.list_jobs(name="B", limit=300)} == {0}


# --------------------------------------------------------------------------- (3)

# (name, priority, label), enqueued one by one in this order.
PLAN = [
    ("A", 5, "a1"),
    ("B", 0, "b1"),
    ("C", -5, "c1"),
    ("A", 0, "a2"),
    ("B", 5, "b2"),
    ("C", 0, "c2"),
    ("A", -1, "a3"),
    ("B", -1, "b3"),
    ("A", 0, "a4"),
    ("C", -9, "c3"),
]
SERVED_ORDER = ["a3", "b3", "b1", "a2", "a4", "a1", "b2"]  # C is not served


@pytest.mark.parametrize("queues", [["default"], ["q1", "q2"]], ids=["one-queue", "two-queues"])
@pytest.mark.parametrize("limit", [1, 3, 20])
@pytest.mark.parametrize("idle_names", [0, 300], ids=["two-names", "many-names"])
@needs("priorities", "ordered", "negative_priorities")
async def test_priority_then_fifo_among_the_served_names(
    app: Conveyor, queues: list[str], limit: int, idle_names: int
) -> None:
    # many-names: a worker with hundreds of job types (most with nothing queued).
    served = [f"idle-{n}" for n in range(idle_names)] + ["B", "A"]
    register(app, "ABC", [], "producer")
    labels: dict[str, str] = {}
    for index, (name, priority, label) in enumerate(PLAN):
        job = await app.enqueue(name, label, priority=priority, queue=queues[index % len(queues)])
        labels[job.id] = label
    order: list[str] = []
    while batch := await app.backend.claim(queues, limit, 30.0, time.time(), names=served):
        assert len(batch) <= limit
        order += [labels[job.id] for job in batch]
    assert order == SERVED_ORDER
    rest = await app.backend.claim(queues, 20, 30.0, time.time(), names=None)  # any name
    assert [labels[job.id] for job in rest] == ["c3", "c1", "c2"]


@needs("priorities", "ordered", "negative_priorities")
async def test_a_worker_runs_two_names_in_priority_then_fifo_order(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    ran: list[tuple[str, Any]] = []
    register(app, "AB", ran, "worker")
    jobs = [
        await app.enqueue(name, label, priority=priority)
        for name, priority, label in PLAN
        if name != "C"
    ]
    async with worker(app, concurrency=1):
        for job in jobs:
            await app.wait(job.id, timeout=WAIT)
    assert [payload for _, payload in ran] == SERVED_ORDER


# --------------------------------------------------------------------------- the worker's defence


@needs("claims_by_name")
async def test_a_job_reaching_a_worker_without_its_handler_is_handed_back_untouched(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    old, new, ran = await old_and_new(make_app, backend_name)
    b = await new.enqueue("B", "new type")
    a = await new.enqueue("A", "old type")
    ignore_names(old, calls=1)  # the first claim takes B, the head of the queue
    async with worker(old, concurrency=1):
        assert (await new.wait(a.id, timeout=WAIT)).state is JobState.COMPLETED
    stored = await new.get_job(b.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.error) == (JobState.QUEUED, 0, None)
    assert ran == [("old", "old type")]


async def test_a_backend_that_keeps_returning_an_unknown_job_does_not_loop(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    # If name filtering is ignored (a backend without it), handing the job
    # back would bring it straight back: the worker hands it back once, then
    # fails it as before, instead of claiming it over and over.
    old, new, _ = await old_and_new(make_app, backend_name)
    b = await new.enqueue("B", "new type")
    ignore_names(old)
    async with worker(old, concurrency=1):
        done = await new.wait(b.id, timeout=WAIT)
    assert (done.state, done.attempts) == (JobState.FAILED, 1)
    assert "no handler for job 'B'" in (done.error or "")


def count_claims(app: Conveyor) -> list[int]:
    """Count the backend's claim and wait calls (a one-element list, reset by the caller)."""
    calls = [0]
    backend = app.backend
    for attr in ("claim", "finish_and_claim", "claim_blocking", "wait_for_work"):
        if hasattr(backend, attr):
            method = getattr(backend, attr)

            async def counted(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
                calls[0] += 1
                return await _method(*args, **kwargs)

            setattr(backend, attr, counted)
    return calls


@needs("concurrent_claims")
async def test_an_idle_worker_does_not_spin_on_jobs_it_cannot_run(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    old, new, _ = await old_and_new(make_app, backend_name)
    await new.enqueue_many([("B", n) for n in range(3)])
    calls = count_claims(old)
    async with worker(old, poll_interval=0.5):
        a = await new.enqueue("A", "wake up")
        await new.wait(a.id, timeout=WAIT)
        calls[0] = 0
        await asyncio.sleep(1.0)  # an observation window: nothing is awaited here
        idle_calls = calls[0]
    # Waking up once per poll interval is a handful of calls; a worker woken
    # over and over by the B jobs would make thousands.
    assert idle_calls <= 12, idle_calls


async def test_an_idle_worker_does_not_spin_on_a_due_job_of_a_queue_it_does_not_serve(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    old, new, _ = await old_and_new(make_app, backend_name)
    elsewhere = await new.enqueue("A", "elsewhere", queue="other", delay=0.1)
    calls = count_claims(old)
    async with worker(old, queues=["default"], poll_interval=0.5):
        a = await new.enqueue("A", "wake up")
        await new.wait(a.id, timeout=WAIT)
        calls[0] = 0
        await asyncio.sleep(1.0)  # the "other" job is due meanwhile; nobody here serves it
        idle_calls = calls[0]
    assert idle_calls <= 12, idle_calls
    assert (await new.get_job(elsewhere.id)).state in (JobState.SCHEDULED, JobState.QUEUED)


# --------------------------------------------------------------------------- (4)


async def test_workers_lists_a_running_worker_and_drops_it_after_stop(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    old, new, _ = await old_and_new(make_app, backend_name)
    before = time.time()
    async with worker(old, queues=["default", "other"]) as running:
        infos = {info.id: info for info in await new.workers()}
        info = infos[running.id]
        assert info.queues == ("default", "other")
        assert info.names == ("A",)
        assert (info.host, info.pid) == (socket.gethostname(), os.getpid())
        assert before - 1 <= info.started_at <= info.last_seen <= time.time() + 1
        assert running.id in {info.id for info in await asyncio.to_thread(new.workers_sync)}
    assert running.id not in {info.id for info in await new.workers()}


@needs("concurrent_claims")
async def test_unserved_shows_waiting_jobs_of_names_no_live_worker_serves(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    from conveyor.backends.stores import WorkerInfo, WorkerRegistry

    old, new, _ = await old_and_new(make_app, backend_name)
    await new.enqueue_many([("B", n) for n in range(3)])
    await new.enqueue_many([("B", "elsewhere", {"queue": "other"}), ("A", 1, {"queue": "other"})])
    everything = {"default": {"B": 3}, "other": {"A": 1, "B": 1}}
    assert await new.unserved() == everything  # no worker at all
    async with worker(old):  # serves A on "default" only
        a = await new.enqueue("A", "served")
        await new.wait(a.id, timeout=WAIT)
        assert await new.unserved() == everything
        assert await asyncio.to_thread(new.unserved_sync) == everything
        # A live worker (in another process, say) that serves both names on
        # "other": what waits there has a worker now.
        backend = new.backend
        assert isinstance(backend, WorkerRegistry)
        now = time.time()
        info = WorkerInfo("w-other", "box", 1, ("other",), ("A", "B"), now, now)
        await backend.worker_beat(info, 60.0, now)
        assert await new.unserved() == {"default": {"B": 3}}
        await backend.worker_gone("w-other")
        assert await new.unserved() == everything


async def test_worker_records_expire_after_their_ttl(app: Conveyor) -> None:
    from conveyor.backends.stores import WorkerInfo, WorkerRegistry

    backend = app.backend
    assert isinstance(backend, WorkerRegistry)
    t0 = time.time()
    info = WorkerInfo(
        id="w-1",
        host="box",
        pid=42,
        queues=("default",),
        names=("B",),
        started_at=t0,
        last_seen=t0,
    )
    await backend.worker_beat(info, 10.0, t0)
    assert [w.id for w in await backend.workers(t0 + 9)] == ["w-1"]
    assert (await backend.workers(t0 + 9))[0] == info
    assert await backend.workers(t0 + 11) == []  # silent past its TTL: gone
    info.last_seen = t0 + 8
    await backend.worker_beat(info, 10.0, t0 + 8)  # a later beat keeps it alive
    assert [w.id for w in await backend.workers(t0 + 11)] == ["w-1"]
    await backend.worker_gone("w-1")
    assert await backend.workers(t0 + 11) == []
    await backend.worker_gone("w-1")  # idempotent
