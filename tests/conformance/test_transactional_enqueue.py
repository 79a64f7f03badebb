"""Enqueueing inside the caller's transaction: `enqueue(..., connection=conn)`,
`enqueue_many` and the blocking twins store the jobs on the caller's own
connection, so they exist exactly when its transaction commits.

Every test runs on every backend: where the backend cannot
(`capabilities.transactional_enqueue` is false) it checks the clear
NotSupportedError instead, and nothing stored. On PostgreSQL the caller's
connection is a real psycopg connection to the same server.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor import Conveyor, InvalidOptionError, JobState, NotSupportedError

from .conftest import needs
from .helpers import WAIT, eventually, wait_state

pytestmark = needs("lookup")


def total(stats: dict[str, dict[str, int]]) -> int:
    return sum(sum(counts.values()) for counts in stats.values())


def can(app: Conveyor) -> bool:
    return app.backend.capabilities.transactional_enqueue


def conninfo(app: Conveyor) -> str:
    """libpq's URL of the server and database the app's jobs live in."""
    from conveyor.backends.postgres.url import parse_url

    return parse_url(app.url).conninfo


def schema(app: Conveyor) -> str:
    from conveyor.backends.postgres.url import parse_url

    return parse_url(app.url).schema


def recording(app: Conveyor) -> tuple[list[Any], list[str]]:
    """Register `work` (it records its payloads) and record job.enqueued events."""
    ran: list[Any] = []
    enqueued: list[str] = []

    @app.job("work")
    async def work(payload: Any) -> None:
        ran.append(payload)

    app.on("job.enqueued", lambda event: enqueued.append(event.job.id))
    return ran, enqueued


async def refused_everywhere(app: Conveyor) -> None:
    """The backend cannot: every form says so and stores nothing."""
    with pytest.raises(NotSupportedError, match=r"connection="):
        await app.enqueue("work", {"n": 1}, connection=object())
    with pytest.raises(NotSupportedError, match=r"connection="):
        await app.enqueue_many([("work", {"n": 2})], connection=object())
    with pytest.raises(NotSupportedError, match=r"connection="):
        await asyncio.to_thread(app.enqueue_sync, "work", {"n": 3}, connection=object())
    with pytest.raises(NotSupportedError, match=r"connection="):
        await asyncio.to_thread(
            app.job_type("work").enqueue_many_sync, [{"n": 4}], connection=object()
        )
    assert total(await app.stats()) == 0


@pytest.fixture
async def connect(app: Conveyor) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """Open async psycopg connections to the app's database (closed after)."""
    opened: list[Any] = []

    async def open_one() -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(conninfo(app))
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


async def test_rolled_back_leaves_no_job_and_no_event_committed_runs(
    app: Conveyor, worker, connect
) -> None:
    ran, enqueued = recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    import psycopg

    conn = await connect()
    async with conn.transaction(force_rollback=True):
        job = await app.enqueue("work", {"n": 1}, connection=conn)
        assert job.state is JobState.QUEUED and not job.duplicate
        # Inside the transaction the job is there for the caller only.
        cur = await conn.execute(f'SELECT count(*) FROM "{schema(app)}".jobs')
        assert await cur.fetchone() == (1,)
        assert await app.get_job(job.id) is None
    assert await app.get_job(job.id) is None
    assert total(await app.stats()) == 0

    async with conn.transaction():
        kept = await app.enqueue("work", {"n": 2}, connection=conn)
        assert await app.get_job(kept.id) is None  # not committed yet
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (await app.get_job(kept.id)).state is JobState.QUEUED
    async with worker(app):
        done = await app.wait(kept.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert ran == [{"n": 2}]
    assert enqueued == []  # the commit is the caller's: no job.enqueued event


async def test_the_blocking_twins_with_a_blocking_connection(app: Conveyor, worker) -> None:
    ran, enqueued = recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    import psycopg

    class RolledBack(Exception):
        pass

    def rolled_back() -> str:
        with psycopg.connect(conninfo(app)) as conn:
            try:
                with conn.transaction():
                    job = app.enqueue_sync("work", {"n": 1}, connection=conn)
                    raise RolledBack
            except RolledBack:
                pass
            return job.id

    def committed() -> list[str]:
        with psycopg.connect(conninfo(app)) as conn, conn.transaction():
            one = app.enqueue_sync("work", {"n": 2}, connection=conn)
            handle = app.job_type("work")
            more = handle.enqueue_many_sync([{"n": 3}, {"n": 4}], connection=conn)
            typed = handle.enqueue_sync({"n": 5}, connection=conn)
            return [one.id, *(j.id for j in more), typed.id]

    gone = await asyncio.to_thread(rolled_back)
    assert await app.get_job(gone) is None
    assert total(await app.stats()) == 0

    ids = await asyncio.to_thread(committed)
    async with worker(app):
        for job_id in ids:
            assert (await app.wait(job_id, timeout=WAIT)).state is JobState.COMPLETED
    assert sorted(p["n"] for p in ran) == [2, 3, 4, 5]
    assert enqueued == []


async def test_a_blocking_connection_from_async_code(app: Conveyor, connect) -> None:
    """`await app.enqueue(..., connection=)` takes a blocking psycopg
    connection too (its statement runs on a thread)."""
    recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    import psycopg

    conn = await asyncio.to_thread(psycopg.connect, conninfo(app))
    try:
        job = await app.enqueue("work", {"n": 1}, connection=conn)
        assert await app.get_job(job.id) is None
        await asyncio.to_thread(conn.commit)
        assert (await app.get_job(job.id)).payload == {"n": 1}
    finally:
        await asyncio.to_thread(conn.close)


async def test_enqueue_many_in_a_transaction(app: Conveyor, connect) -> None:
    _, enqueued = recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    items = [
        ("work", {"n": 1}),
        ("work", {"n": 2}, {"delay": 3600, "priority": 5}),
        ("work", {"n": 3}, {"queue": "other", "key": "many:3"}),
    ]
    conn = await connect()
    async with conn.transaction(force_rollback=True):
        jobs = await app.enqueue_many(items, connection=conn)
        assert [j.state for j in jobs] == [JobState.QUEUED, JobState.SCHEDULED, JobState.QUEUED]
    assert total(await app.stats()) == 0
    assert await app.get_job_by_key("many:3") is None

    async with conn.transaction():
        jobs = await app.enqueue_many(items, connection=conn)
        typed = await app.job_type("work").enqueue_many([{"n": 4}], connection=conn)
    stored = [await app.get_job(j.id) for j in [*jobs, *typed]]
    assert [(j.payload["n"], j.state, j.queue) for j in stored] == [
        (1, JobState.QUEUED, "default"),
        (2, JobState.SCHEDULED, "default"),
        (3, JobState.QUEUED, "other"),
        (4, JobState.QUEUED, "default"),
    ]
    assert stored[1].priority == 5
    # The delay counts from the server's clock, as for any enqueue.
    assert 3599 < (stored[1].run_at - stored[1].created_at).total_seconds() <= 3600.5
    assert (await app.get_job_by_key("many:3")).id == jobs[2].id
    assert enqueued == []


async def test_keys_inside_a_transaction(app: Conveyor, connect) -> None:
    recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    existing = await app.enqueue("work", {"n": 0}, key="k:committed")
    conn = await connect()
    async with conn.transaction():
        again = await app.enqueue("work", {"n": 1}, key="k:committed", connection=conn)
        assert again.duplicate and again.id == existing.id and again.payload == {"n": 0}
        first = await app.enqueue("work", {"n": 2}, key="k:new", connection=conn)
        second = await app.enqueue("work", {"n": 3}, key="k:new", connection=conn)
        assert not first.duplicate
        assert second.duplicate and second.id == first.id and second.payload == {"n": 2}
        both = await app.enqueue_many(
            [("work", {"n": 4}, {"key": "k:many"}), ("work", {"n": 5}, {"key": "k:many"})],
            connection=conn,
        )
        assert [j.duplicate for j in both] == [False, True] and both[0].id == both[1].id
    assert (await app.get_job_by_key("k:new")).id == first.id
    assert total(await app.stats()) == 3


async def test_a_key_held_by_an_open_transaction(app: Conveyor, connect) -> None:
    """Another producer's enqueue of a key that an open transaction has
    just stored waits for that transaction: after a rollback it stores its
    own job, after a commit it gets the committed one as a duplicate."""
    recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    conn, observer = await connect(), await connect()
    await observer.set_autocommit(True)

    async def blocked_on_the_key() -> bool:
        cur = await observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND query LIKE %s",
            (f"%{schema(app)}%.jobs%",),
        )
        row = await cur.fetchone()
        return row is not None and row[0] > 0

    for outcome in ("rollback", "commit"):
        key = f"k:held:{outcome}"
        await conn.execute("BEGIN")
        held = await app.enqueue("work", {"held": True}, key=key, connection=conn)
        other = asyncio.create_task(app.enqueue("work", {"held": False}, key=key))
        await eventually(blocked_on_the_key, message="the other enqueue to wait on the key")
        assert not other.done()
        await (conn.rollback() if outcome == "rollback" else conn.commit())
        got = await asyncio.wait_for(other, WAIT)
        if outcome == "rollback":
            assert not got.duplicate and got.id != held.id and got.payload == {"held": False}
        else:
            assert got.duplicate and got.id == held.id and got.payload == {"held": True}
        assert (await app.get_job_by_key(key)).id == got.id


async def test_a_connection_conveyor_cannot_use_is_refused_clearly(app: Conveyor, connect) -> None:
    recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    import psycopg

    with pytest.raises(InvalidOptionError, match=r"psycopg 3 connection.*got object"):
        await app.enqueue("work", {}, connection=object())
    with pytest.raises(InvalidOptionError, match=r"psycopg 3 connection.*got str"):
        await app.enqueue("work", {}, connection=conninfo(app))
    sqlite = sqlite3.connect(":memory:")
    try:
        with pytest.raises(InvalidOptionError, match=r"got Connection"):
            await app.enqueue_many([("work", {})], connection=sqlite)
    finally:
        sqlite.close()

    closed = await connect()
    await closed.close()
    with pytest.raises(InvalidOptionError, match="is closed"):
        await app.enqueue("work", {}, connection=closed)

    failed = await connect()
    with pytest.raises(psycopg.errors.DivisionByZero):
        await failed.execute("SELECT 1/0")
    with pytest.raises(InvalidOptionError, match=r"failed transaction.*roll it back"):
        await app.enqueue("work", {}, connection=failed)

    # An asyncio connection belongs to its event loop: the blocking twin,
    # whose call runs on a loop of its own, refuses it.
    live = await connect()
    with pytest.raises(InvalidOptionError, match=r"asyncio connection.*await app\.enqueue"):
        await asyncio.to_thread(app.enqueue_sync, "work", {}, connection=live)

    # A connection to another database has no conveyor tables.
    elsewhere = await psycopg.AsyncConnection.connect(conninfo(app), dbname="postgres")
    try:
        with pytest.raises(InvalidOptionError, match="not connected to conveyor's database"):
            await app.enqueue("work", {}, connection=elsewhere)
    finally:
        await elsewhere.close()
    assert total(await app.stats()) == 0


async def test_a_commit_wakes_an_idle_worker_at_once(app: Conveyor, worker, connect) -> None:
    """The insert trigger NOTIFYs on commit: a worker waiting for work (its
    poll interval 30 s) runs the job at once."""
    ran, _ = recording(app)
    if not can(app):
        await refused_everywhere(app)
        return
    observer = await connect()
    await observer.set_autocommit(True)

    async def listening() -> bool:
        cur = await observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = %s",
            (f'LISTEN "conveyor:{schema(app)}"',),
        )
        row = await cur.fetchone()
        return row is not None and row[0] > 0

    conn = await connect()
    async with worker(app, poll_interval=30.0):
        await eventually(listening, message="the worker's LISTEN connection")
        # Its self-test and one look for work follow (milliseconds), then the
        # wait: a commit before that would be found by the look, and prove
        # nothing about the NOTIFY (never fail: the job runs either way).
        await asyncio.sleep(0.3)
        async with conn.transaction():
            job = await app.enqueue("work", {"n": 1}, connection=conn)
        committed = time.monotonic()
        await wait_state(app, job.id, JobState.COMPLETED, timeout=WAIT)
        took = time.monotonic() - committed
    assert ran == [{"n": 1}]
    assert took < 5.0, f"the job ran {took:.1f} s after the commit (poll interval 30 s)"
