"""`DeliveryStore` (base.py): what a broker backend (SQS, Pub/Sub) needs of
the backend that keeps its job records, on every backend that offers it.

`claim_ids` leases the delivered jobs that are queued, exactly as `claim`
would (so heartbeats, acknowledgements, hand-backs, recovery and cancels work
on them after), and `release_due` moves due scheduled jobs to the queue, each
to one caller only. Times are given explicitly where a test needs them
(`now=`), as every backend takes a caller's `now` as given."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol, cast

import pytest

from conveyor.backends import from_url
from conveyor.backends.base import (
    Backend,
    CancelResult,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
)
from conveyor.backends.optional import DeliveryStore
from conveyor.job import Job, JobState

LEASE = 30.0


class Store(Backend, DeliveryStore, Protocol):
    """For type checkers: a backend that is a delivery store too."""


def new(
    job_id: str,
    *,
    queue: str = "q",
    name: str = "work",
    run_at: float | None = None,
    priority: int = 0,
) -> NewJob:
    now = time.time()
    return NewJob(
        id=job_id,
        name=name,
        queue=queue,
        payload=json.dumps({"id": job_id}),
        priority=priority,
        max_retries=3,
        timeout=None,
        key=None,
        created_at=now,
        run_at=now if run_at is None else run_at,
    )


async def opened(url: str) -> Store:
    backend = from_url(url)
    await backend.open()
    assert isinstance(backend, DeliveryStore)
    return cast(Store, backend)


@pytest.fixture
async def store(backend_url: str, backend_name: str) -> AsyncIterator[Store]:
    if not isinstance(from_url(backend_url), DeliveryStore):
        pytest.skip(f"{backend_name} is not a delivery store (a broker uses one)")
    backend = await opened(backend_url)
    yield backend
    await backend.close()


@pytest.fixture
async def other(store: Store, backend_name: str, backend_url: str) -> AsyncIterator[Store]:
    """A second backend object on the same store (a second process's), or
    the same object where the store lives in the object (memory)."""
    if backend_name == "memory":
        yield store
        return
    backend = await opened(backend_url)
    yield backend
    await backend.close()


def ids_of(jobs: Sequence[Job | None]) -> list[str | None]:
    return [None if job is None else job.id for job in jobs]


def done(job_id: str, token: str, kind: OutcomeKind = OutcomeKind.COMPLETED) -> Outcome:
    return Outcome(job_id=job_id, token=token, kind=kind, at=time.time(), result="1")


async def state_of(store: Store, job_id: str) -> JobState:
    job = await store.get(job_id)
    assert job is not None
    return job.state


# --------------------------------------------------------------------------- claim_ids


async def test_claim_ids_leases_only_queued_jobs_one_entry_per_id_in_order(store: Store) -> None:
    # r running, c completed (taken by a claim of their name alone).
    await store.enqueue([new("r", name="setup"), new("c", name="setup")])
    taken = await store.claim(["q"], 10, LEASE, claim_id="setup", names=["setup"])
    assert sorted(job.id for job in taken) == ["c", "r"]
    assert await store.finish([done("c", "setup")], Retention()) == [True]
    later = time.time() + 3600
    await store.enqueue([new("a"), new("b", name="other-name", priority=5), new("s", run_at=later)])

    now = time.time()
    got = await store.claim_ids(
        ["b", "missing", "a", "s", "r", "c", "a"], LEASE, now, claim_id="cid"
    )

    assert ids_of(got) == ["b", None, "a", None, None, None, None]
    for job in (got[0], got[2]):
        assert job is not None
        assert job.state is JobState.RUNNING
        assert job.attempts == 1
        assert job.token == "cid"
        assert job.started_at is not None
        assert job.started_at.timestamp() == pytest.approx(now, abs=1e-3)
        stored = await store.get(job.id)
        assert stored is not None
        assert stored.state is JobState.RUNNING
        assert stored.attempts == 1
        assert stored.token is None  # records read any other way carry none
    got_b = got[0]
    assert got_b is not None and got_b.name == "other-name" and got_b.priority == 5
    assert got_b.payload == {"id": "b"}
    # The others are untouched.
    assert await state_of(store, "s") is JobState.SCHEDULED
    assert await state_of(store, "r") is JobState.RUNNING
    assert await state_of(store, "c") is JobState.COMPLETED
    r = await store.get("r")
    assert r is not None and r.attempts == 1


async def test_jobs_claimed_by_id_leave_the_ready_indexes(store: Store) -> None:
    await store.enqueue([new("a"), new("b"), new("c", name="other")])
    got = await store.claim_ids(["c", "a"], LEASE, claim_id="cid")
    assert ids_of(got) == ["c", "a"]

    stats = await store.stats()
    assert stats["q"]["queued"] == 1
    assert stats["q"]["running"] == 2
    queued = await store.list_jobs(state=JobState.QUEUED, name=None, queue="q", limit=10, offset=0)
    assert ids_of(queued) == ["b"]
    # A claim finds only b: a and c are not handed out a second time.
    claimed = await store.claim(["q"], 10, LEASE, claim_id="next")
    assert ids_of(claimed) == ["b"]
    assert await store.claim(["q"], 10, LEASE, claim_id="again") == []
    assert await store.claim_ids(["a", "b", "c"], LEASE, claim_id="late") == [None, None, None]


async def test_claim_ids_of_nothing(store: Store) -> None:
    assert await store.claim_ids([], LEASE, claim_id="cid") == []
    assert await store.claim_ids(["nope"], LEASE, claim_id="cid") == [None]


async def test_a_job_claimed_by_id_is_fenced_by_its_claim_id(store: Store) -> None:
    await store.enqueue([new("a"), new("b"), new("c")])
    got = await store.claim_ids(["a", "b", "c"], LEASE, claim_id="t1")
    assert ids_of(got) == ["a", "b", "c"]

    beats = [Heartbeat("a", "t1"), Heartbeat("a", "wrong"), Heartbeat("b", "t1")]
    assert await store.heartbeat(beats, LEASE) == [
        LeaseStatus.HELD,
        LeaseStatus.LOST,
        LeaseStatus.HELD,
    ]
    assert await store.progress("b", "wrong", 50.0, []) is False
    assert await store.progress("b", "t1", 50.0, []) is True

    assert await store.finish([done("a", "wrong")], Retention()) == [False]
    assert await store.finish([done("a", "t1")], Retention()) == [True]
    a = await store.get("a")
    assert a is not None and a.state is JobState.COMPLETED and a.result == 1

    assert await store.cancel("c") is CancelResult.REQUESTED
    assert await store.heartbeat([Heartbeat("c", "t1")], LEASE) == [LeaseStatus.CANCEL]

    # The claim id undoes the claim: b is handed back (attempt not counted),
    # c, whose cancel was requested, ends cancelled; a had finished.
    assert await store.unclaim("wrong") == 0
    assert await store.unclaim("t1") == 2
    assert await store.unclaim("t1") == 0
    b = await store.get("b")
    assert b is not None and b.state is JobState.QUEUED and b.attempts == 0
    assert await state_of(store, "c") is JobState.CANCELLED

    # Handed back, b is queued again: a claim by id or by queue takes it anew.
    again = await store.claim_ids(["b"], LEASE, claim_id="t2")
    assert ids_of(again) == ["b"]
    assert again[0] is not None and again[0].attempts == 1 and again[0].token == "t2"
    assert await store.heartbeat([Heartbeat("b", "t1")], LEASE) == [LeaseStatus.LOST]
    assert await store.finish([done("b", "t2", OutcomeKind.QUEUED)], Retention()) == [True]
    claimed = await store.claim(["q"], 10, LEASE, claim_id="t3")
    assert ids_of(claimed) == ["b"]


async def test_a_lease_taken_by_id_runs_until_now_plus_lease(store: Store) -> None:
    await store.enqueue([new("a"), new("b")])
    now = time.time()
    got = await store.claim_ids(["a", "b"], 60.0, now, claim_id="t1")
    assert ids_of(got) == ["a", "b"]

    assert await store.heartbeat([Heartbeat("a", "t1")], 60.0, now + 59) == [LeaseStatus.HELD]
    early = await store.recover_expired(now + 59, max_stalled=3)
    assert "b" not in ids_of(early)
    recovered = await store.recover_expired(now + 61, max_stalled=3)
    assert "b" in ids_of(recovered)
    assert "a" not in ids_of(recovered)  # its heartbeat moved it to now + 119
    b = await store.get("b")
    assert b is not None and b.state is JobState.QUEUED and b.stalls == 1
    assert await store.finish([done("b", "t1")], Retention()) == [False]

    # Recovered, it is queued: the next delivery leases it again.
    again = await store.claim_ids(["b"], 60.0, now + 62, claim_id="t2")
    assert again[0] is not None and again[0].attempts == 2 and again[0].token == "t2"


async def test_concurrent_claims_of_the_same_ids_lease_each_job_once(
    store: Store, other: Store
) -> None:
    ids = [f"job-{i:03d}" for i in range(60)]
    await store.enqueue([new(job_id) for job_id in ids])
    first, second = await asyncio.gather(
        store.claim_ids(ids, LEASE, claim_id="x"),
        other.claim_ids(list(reversed(ids)), LEASE, claim_id="y"),
    )
    won_x = {job.id for job in first if job is not None}
    won_y = {job.id for job in second if job is not None}
    assert not won_x & won_y
    assert won_x | won_y == set(ids)
    assert all(job.token == "x" for job in first if job is not None)
    assert all(job.token == "y" for job in second if job is not None)


# --------------------------------------------------------------------------- release_due


async def test_release_due_moves_due_jobs_of_the_named_queues_earliest_first(
    store: Store,
) -> None:
    t = time.time() + 3600  # all scheduled when enqueued
    await store.enqueue(
        [
            new("s3", run_at=t + 300),
            new("s1", run_at=t + 100),
            new("s2", run_at=t + 200, name="other-name", priority=-5),
            new("s4", run_at=t + 400),
            new("elsewhere", queue="q2", run_at=t + 50),
            new("ready"),
        ]
    )

    released = await store.release_due(["q"], 10, t + 250)

    assert ids_of(released) == ["s1", "s2"]
    for job in released:
        assert job.state is JobState.QUEUED
        assert job.token is None
        assert job.attempts == 0
    assert released[0].run_at is not None
    assert released[0].run_at.timestamp() == pytest.approx(t + 100, abs=1e-3)
    assert await state_of(store, "s1") is JobState.QUEUED
    assert await state_of(store, "s3") is JobState.SCHEDULED
    assert await state_of(store, "elsewhere") is JobState.SCHEDULED
    assert await state_of(store, "ready") is JobState.QUEUED
    stats = await store.stats()
    assert stats["q"]["queued"] == 3 and stats["q"]["scheduled"] == 2
    assert stats["q2"]["scheduled"] == 1

    assert await store.release_due(["q"], 10, t + 250) == []  # released once only

    # Limited, across queues, earliest first.
    assert ids_of(await store.release_due(["q", "q2"], 2, t + 1000)) == ["elsewhere", "s3"]
    assert ids_of(await store.release_due(["q", "q2"], 2, t + 1000)) == ["s4"]
    assert await store.release_due(["q", "q2"], 2, t + 1000) == []


async def test_released_jobs_are_claimable(store: Store) -> None:
    t = time.time() + 3600
    await store.enqueue([new("s1", run_at=t + 1), new("s2", run_at=t + 2)])
    assert await store.claim_ids(["s1", "s2"], LEASE, claim_id="early") == [None, None]

    assert ids_of(await store.release_due(["q"], 10, t + 5)) == ["s1", "s2"]

    got = await store.claim_ids(["s2"], LEASE, claim_id="cid")
    assert ids_of(got) == ["s2"]
    assert got[0] is not None and got[0].attempts == 1 and got[0].token == "cid"
    assert ids_of(await store.claim(["q"], 10, LEASE, t + 5, claim_id="next")) == ["s1"]


async def test_release_due_of_nothing(store: Store) -> None:
    t = time.time() + 3600
    await store.enqueue([new("s", run_at=t)])
    assert await store.release_due(["q"], 0, t + 1) == []
    assert await store.release_due([], 10, t + 1) == []
    assert await store.release_due(["q"], 10, t - 1) == []
    assert await store.release_due(["nowhere"], 10, t + 1) == []


async def test_release_due_by_the_backends_own_clock(store: Store) -> None:
    soon = new("soon")
    soon.run_at = soon.created_at + 0.3
    soon.relative = True  # a delay: counted from the backend's clock
    await store.enqueue([soon, new("later", run_at=time.time() + 3600)])
    assert await store.release_due(["q"], 10) == []
    await asyncio.sleep(0.5)
    assert ids_of(await store.release_due(["q"], 10)) == ["soon"]


async def test_concurrent_release_due_calls_never_return_the_same_job(
    store: Store, other: Store
) -> None:
    t = time.time() + 3600
    count = 120
    await store.enqueue([new(f"s{i:03d}", run_at=t + i) for i in range(count)])
    seen: list[str] = []
    for _ in range(10):
        batches = await asyncio.gather(
            *(backend.release_due(["q"], 7, t + 1000) for backend in (store, other) * 3)
        )
        for batch in batches:
            run_ats = [job.run_at for job in batch]
            assert run_ats == sorted(run_ats)  # type: ignore[type-var]
            seen += [job.id for job in batch]
    assert len(seen) == len(set(seen)), "a job was released to two callers"
    assert sorted(seen) == [f"s{i:03d}" for i in range(count)]
    assert (await store.stats())["q"]["queued"] == count


@pytest.mark.memory
# --------------------------------------------------------------------------- withdraw


async def test_withdraw_deletes_unsent_jobs_and_frees_their_keys(store: Store) -> None:
    later = time.time() + 3600
    keyed = dataclasses.replace(new("w-keyed"), key="order:7")
    await store.enqueue(
        [keyed, new("w-held", run_at=later), new("w-running"), new("w-kept"), new("w-retry")]
    )
    (running,) = await store.claim_ids(["w-running"], LEASE, claim_id="c-1")
    assert running is not None
    # w-retry ran once, failed, and waits for its retry: it was delivered.
    (ran,) = await store.claim_ids(["w-retry"], LEASE, claim_id="c-2")
    assert ran is not None and ran.token is not None
    retry = Outcome("w-retry", ran.token, OutcomeKind.SCHEDULED, time.time(), retry_in=86400)
    assert await store.finish([retry], Retention()) == [True]
    assert await state_of(store, "w-retry") is JobState.SCHEDULED
    # Withdrawn: queued or scheduled jobs no message was sent for (never
    # delivered). A job that runs already, or ran and waits for a retry, is
    # not (it was delivered after all); unknown ids are ignored. The answer
    # names the jobs withdrawn.
    removed = await store.withdraw(["w-keyed", "w-held", "w-running", "w-retry", "nope"])
    assert sorted(removed) == ["w-held", "w-keyed"]
    assert await state_of(store, "w-retry") is JobState.SCHEDULED
    assert await store.get("w-keyed") is None
    assert await store.get("w-held") is None
    assert await state_of(store, "w-running") is JobState.RUNNING
    assert await state_of(store, "w-kept") is JobState.QUEUED
    # The key is free again: the same key makes a new job, not a duplicate.
    (again,) = await store.enqueue([dataclasses.replace(new("w-keyed-2"), key="order:7")])
    assert not again.duplicate and again.id == "w-keyed-2"
    counts = (await store.stats())["q"]
    assert counts["queued"] == 2 and counts["scheduled"] == 1  # w-kept, w-keyed-2; w-retry
    assert await store.release_due(["q"], 10, now=later + 1) == []


async def test_withdraw_of_nothing(store: Store) -> None:
    assert await store.withdraw([]) == []


async def test_memory_waiters_do_not_take_jobs_claimed_by_id_for_work() -> None:
    """The memory backend drops the ready-heap entries of jobs claimed by id
    (no claim pops them in a broker's store): a waiter would otherwise find
    "work" that is not there, and return at once, forever."""
    store = await opened("memory://")
    await store.enqueue([new("a"), new("b")])
    assert ids_of(await store.claim_ids(["b", "a"], LEASE, claim_id="cid")) == ["b", "a"]
    started = time.monotonic()
    await store.wait_for_work(["q"], 0.3)
    assert time.monotonic() - started >= 0.25


@pytest.mark.redis
async def test_redis_claims_by_id_a_job_queued_in_the_old_per_queue_set(
    redis_urls: Callable[[], str],
) -> None:
    """A job a release before per-name sets left in `P:ready:<queue>` is
    leased by id too, and leaves that set (stats count it no longer)."""
    import redis.asyncio as aioredis

    url = redis_urls()
    store = await opened(url)
    try:
        await store.enqueue([new("old"), new("new")])
        prefix = store.prefix  # type: ignore[attr-defined]
        client = aioredis.Redis.from_url(url.split("?")[0])
        try:
            key = f"{prefix}:queued:1:q:work"
            score = await client.zscore(key, "old")
            assert score is not None
            await client.zrem(key, "old")
            await client.zadd(f"{prefix}:ready:q", {"old": score})
        finally:
            await client.aclose()
        assert (await store.stats())["q"]["queued"] == 2

        assert ids_of(await store.claim_ids(["old"], LEASE, claim_id="cid")) == ["old"]
        stats = (await store.stats())["q"]
        assert (stats["queued"], stats["running"]) == (1, 1)
        assert ids_of(await store.claim(["q"], 10, LEASE, claim_id="next")) == ["new"]
    finally:
        await store.close()
