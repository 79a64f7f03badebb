"""What only the SQLite backend has to get right: the file, the schema, the
lock discipline between processes, and the cross-connection wake-up.

The behaviour every backend shares is the conformance suite's; the one
exception here is a differential test against the memory backend (the
reference implementation), which drives both through the same random
operations and compares every answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import from_url
from conveyor.backends.base import (
    Backend,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
)
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.sqlite import SCHEMA_VERSION, SQLiteBackend
from conveyor.backends.stores import ScheduleRecord
from conveyor.job import (
    BackendUnavailableError,
    InvalidOptionError,
    Job,
    JobState,
    new_job_id,
)

pytestmark = pytest.mark.sqlite

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def new_job(
    queue: str = "default", *, key: str | None = None, delay: float = 0.0, **kw: Any
) -> NewJob:
    now = time.time()
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "name": "task",
        "queue": queue,
        "payload": json.dumps({"n": 1}),
        "priority": 0,
        "max_retries": 3,
        "timeout": 30.0,
        "key": key,
        "created_at": now,
        "run_at": now + delay,
    }
    fields.update(kw)
    return NewJob(**fields)


def url_for(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}{query}"


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    b = SQLiteBackend(url_for(tmp_path / "jobs.db"))
    await b.open()
    yield b
    await b.close()


# The backend threads alive when the test began: another test's backend left
# open (a daemon thread) is not this test's to answer for.
_EARLIER: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _earlier_threads() -> None:
    _EARLIER.clear()
    _EARLIER.update(t for t in threading.enumerate() if t.name.startswith("conveyor-sqlite"))


def backend_threads() -> list[threading.Thread]:
    """The SQLite backend threads started during this test and still alive."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("conveyor-sqlite") and t not in _EARLIER
    ]


# --------------------------------------------------------------------------- URLs


def test_from_url_builds_the_backend_without_touching_the_disk(tmp_path: Path) -> None:
    b = from_url(url_for(tmp_path / "jobs.db"))
    assert isinstance(b, SQLiteBackend)
    assert isinstance(b, Backend)
    assert not (tmp_path / "jobs.db").exists()


def test_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert SQLiteBackend("sqlite:///sub/jobs.db").path == str(tmp_path / "sub" / "jobs.db")
    assert SQLiteBackend(f"sqlite:///{tmp_path}/a.db").path == str(tmp_path / "a.db")
    assert SQLiteBackend("sqlite:////var/tmp/a%20b.db").path == "/var/tmp/a b.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "no database file path"),
        ("sqlite:///", "no database file path"),
        ("sqlite://jobs.db", "three slashes"),
        ("sqlite://:memory:", "memory://"),
        ("sqlite:///:memory:", "in-memory SQLite database is not supported"),
        ("sqlite:///file::memory:?cache=shared", "memory://"),
        ("sqlite:///jobs.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///jobs.db?synchronous=maybe", "synchronous"),
        ("sqlite:///jobs.db?journal=off", "unknown option 'journal'"),
    ],
)
def test_bad_urls_are_refused_with_the_url_named(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message) as info:
        SQLiteBackend(url)
    assert repr(url) in str(info.value)


async def test_url_options_reach_the_connection(tmp_path: Path) -> None:
    """busy_timeout is how long a call waits for the write lock (see the lock
    tests below); the connection itself never blocks on the lock, so that its
    thread can serve other calls meanwhile (test_sqlite_locking.py)."""
    b = SQLiteBackend(url_for(tmp_path / "jobs.db", "?busy_timeout=1234&synchronous=FULL"))
    await b.open()
    try:
        assert await b._call(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) == 0
        assert await b._call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
    finally:
        await b.close()


# --------------------------------------------------------------------------- open


async def assert_open_fails(url: str, *fragments: str) -> str:
    b = SQLiteBackend(url)
    with pytest.raises(BackendUnavailableError) as info:
        await b.open()
    message = str(info.value)
    assert "\n" not in message
    assert b.path in message
    for fragment in fragments:
        assert fragment in message
    assert backend_threads() == []
    return message


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


async def test_missing_directory(tmp_path: Path) -> None:
    await assert_open_fails(url_for(tmp_path / "nope" / "jobs.db"), "does not exist")
    assert listing(tmp_path) == []


async def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    await assert_open_fails(url_for(tmp_path / "file" / "jobs.db"), "is not a directory")
    assert listing(tmp_path) == ["file"]


async def test_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "jobs.db").mkdir()
    await assert_open_fails(url_for(tmp_path / "jobs.db"), "is a directory")
    assert listing(tmp_path) == ["jobs.db"]


async def test_file_that_is_not_a_database_is_left_alone(tmp_path: Path) -> None:
    text = "these are my notes, not a database\n" * 100
    (tmp_path / "notes.txt").write_text(text)
    await assert_open_fails(url_for(tmp_path / "notes.txt"), "not a SQLite database")
    assert listing(tmp_path) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == text


@pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions")
async def test_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        await assert_open_fails(url_for(locked / "jobs.db"), "not writable")
        assert listing(locked) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions")
async def test_read_only_file(tmp_path: Path) -> None:
    b = SQLiteBackend(url_for(tmp_path / "jobs.db"))
    await b.open()
    await b.close()
    (tmp_path / "jobs.db").chmod(0o400)
    await assert_open_fails(url_for(tmp_path / "jobs.db"), "permission denied")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
async def test_location_where_no_file_can_be_created() -> None:
    # Even root cannot create files in /proc: the one "permission" failure a
    # test running as root can provoke.
    await assert_open_fails("sqlite:////proc/conveyor-test.db", "/proc/conveyor-test.db")
    assert not await asyncio.to_thread(os.path.exists, "/proc/conveyor-test.db")


async def test_a_failed_open_can_be_retried_once_the_cause_is_fixed(tmp_path: Path) -> None:
    b = SQLiteBackend(url_for(tmp_path / "later" / "jobs.db"))
    with pytest.raises(BackendUnavailableError):
        await b.open()
    (tmp_path / "later").mkdir()
    await b.open()
    try:
        assert await b.stats() == {}
    finally:
        await b.close()


# --------------------------------------------------------------------------- schema


async def test_fresh_file_gets_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    b = SQLiteBackend(url_for(path))
    await b.open()
    try:
        raw = sqlite3.connect(path)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            version = raw.execute(
                "SELECT value FROM conveyor_meta WHERE key = 'schema_version'"
            ).fetchone()[0]
            assert int(version) == SCHEMA_VERSION
            names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
            assert {"conveyor_jobs", "conveyor_meta", "conveyor_jobs_claim"} <= names
        finally:
            raw.close()
    finally:
        await b.close()


async def test_reopening_keeps_jobs_and_open_close_are_idempotent(tmp_path: Path) -> None:
    url = url_for(tmp_path / "jobs.db")
    first = SQLiteBackend(url)
    await first.open()
    await first.open()
    [job] = await first.enqueue([new_job(key="k")])
    await first.close()
    await first.close()
    assert backend_threads() == []

    second = SQLiteBackend(url)
    await second.open()
    try:
        again = await second.get(job.id)
        assert again is not None and again.state is JobState.QUEUED
        [dup] = await second.enqueue([new_job(key="k")])
        assert dup.duplicate and dup.id == job.id
    finally:
        await second.close()


async def test_a_call_opens_a_backend_that_was_not_opened(tmp_path: Path) -> None:
    b = SQLiteBackend(url_for(tmp_path / "jobs.db"))
    try:
        assert await b.stats() == {}
    finally:
        await b.close()
    assert backend_threads() == []


async def test_schema_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    b = SQLiteBackend(url_for(path))
    await b.open()
    await b.close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE conveyor_meta SET value = '999' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    await assert_open_fails(url_for(path), "schema version 999", "newer conveyor")


async def test_a_version_1_database_is_upgraded_to_claim_tokens(tmp_path: Path) -> None:
    """Version 1 fenced by the attempt count; version 2 adds the claim token
    column. A job a version-1 worker held has no token, so nothing fences in
    on its claim: it comes back through lease recovery."""
    path = tmp_path / "jobs.db"
    url = url_for(path)
    b = SQLiteBackend(url)
    await b.open()
    held, waiting = await b.enqueue([new_job(), new_job()])
    now = time.time()
    await b.claim(["default"], 1, 30, now)
    await b.close()
    raw = sqlite3.connect(path)
    for column in ("token", "traceback", "history"):  # the version 1 table
        raw.execute(f"ALTER TABLE conveyor_jobs DROP COLUMN {column}")
    raw.execute("UPDATE conveyor_meta SET value = '1' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()

    upgraded = SQLiteBackend(url)
    await upgraded.open()
    try:
        raw = sqlite3.connect(path)
        try:
            version = raw.execute(
                "SELECT value FROM conveyor_meta WHERE key = 'schema_version'"
            ).fetchone()[0]
            columns = [row[1] for row in raw.execute("PRAGMA table_info(conveyor_jobs)")]
        finally:
            raw.close()
        assert int(version) == SCHEMA_VERSION == 3
        assert {"token", "traceback", "history"} <= set(columns)
        assert await upgraded.heartbeat([Heartbeat(held.id, "1")], 30, now) == [LeaseStatus.LOST]
        [recovered] = await upgraded.recover_expired(now + 60, 1)
        assert recovered.id == held.id and recovered.state is JobState.QUEUED
        claimed = await upgraded.claim(["default"], 2, 30, now + 60)
        assert {j.id for j in claimed} == {held.id, waiting.id}
        outcomes = [Outcome(j.id, j.token, OutcomeKind.COMPLETED, now + 61) for j in claimed]
        assert await upgraded.finish(outcomes, Retention()) == [True, True]
    finally:
        await upgraded.close()


async def test_a_version_2_database_is_upgraded_to_tracebacks_and_history(
    tmp_path: Path,
) -> None:
    """Version 3 adds the traceback and history columns. Jobs stored before
    have neither (None and an empty history); their next attempts add both."""
    path = tmp_path / "jobs.db"
    url = url_for(path)
    b = SQLiteBackend(url)
    await b.open()
    (old,) = await b.enqueue([new_job()])
    await b.close()
    raw = sqlite3.connect(path)
    for column in ("traceback", "history"):  # the version 2 table
        raw.execute(f"ALTER TABLE conveyor_jobs DROP COLUMN {column}")
    raw.execute("UPDATE conveyor_meta SET value = '2' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()

    upgraded = SQLiteBackend(url)
    await upgraded.open()
    try:
        raw = sqlite3.connect(path)
        try:
            version = raw.execute(
                "SELECT value FROM conveyor_meta WHERE key = 'schema_version'"
            ).fetchone()[0]
            columns = [row[1] for row in raw.execute("PRAGMA table_info(conveyor_jobs)")]
        finally:
            raw.close()
        assert int(version) == SCHEMA_VERSION == 3
        assert {"traceback", "history"} <= set(columns)
        stored = await upgraded.get(old.id)
        assert stored is not None and stored.traceback is None and stored.history == []
        now = time.time()
        (claimed,) = await upgraded.claim(["default"], 1, 30, now)
        assert claimed.token is not None
        failed = Outcome(
            claimed.id, claimed.token, OutcomeKind.FAILED, now + 1, error="E", traceback="tb"
        )
        assert await upgraded.finish([failed], Retention()) == [True]
        after = await upgraded.get(old.id)
        assert after is not None and after.traceback == "tb"
        assert [entry["outcome"] for entry in after.history] == ["failed"]
    finally:
        await upgraded.close()


# --------------------------------------------------------------------------- storage details


async def test_a_bad_row_leaves_nothing_of_its_batch(backend: SQLiteBackend) -> None:
    taken = new_job()
    await backend.enqueue([taken])
    batch = [new_job(key="a"), new_job(), new_job(id=taken.id), new_job()]
    with pytest.raises(InvalidOptionError, match="unique"):
        await backend.enqueue(batch)
    assert await backend.stats() == {
        "default": dict.fromkeys(map(str, JobState), 0) | {"queued": 1}
    }
    assert await backend.get_by_key("a") is None


async def test_log_lines_are_appended_as_json(backend: SQLiteBackend) -> None:
    await backend.enqueue([new_job()])
    [job] = await backend.claim(["default"], 1, 30, time.time())
    odd = {"msg": 'quotes " and \\ and ] , [', "emoji": "\u2603", "n": 1.5}
    now = time.time()
    token = job.token
    assert await backend.heartbeat([Heartbeat(job.id, token, logs=[odd])], 30, now) == [
        LeaseStatus.HELD
    ]
    assert await backend.heartbeat([Heartbeat(job.id, token)], 30, now) == [LeaseStatus.HELD]
    assert await backend.progress(job.id, token, 50.0, [{"msg": "half"}, {"msg": "way"}])
    stamp = {
        "msg": "done",
        "at": datetime(2024, 1, 1, tzinfo=UTC),
    }  # not JSON: stored as text, not an error
    [ok] = await backend.finish(
        [Outcome(job.id, token, OutcomeKind.COMPLETED, time.time(), result="7", logs=[stamp])],
        Retention(),
    )
    assert ok
    done = await backend.get(job.id)
    assert done is not None
    assert [line["msg"] for line in done.logs] == [odd["msg"], "half", "way", "done"]
    assert done.logs[0] == odd
    assert isinstance(done.logs[3]["at"], str)
    assert done.result == 7 and done.progress == 100.0


async def test_recovery_trims_failed_jobs_beyond_keep_failed(backend: SQLiteBackend) -> None:
    jobs = await backend.enqueue([new_job() for _ in range(3)])
    now = time.time()
    for n in range(3):
        await backend.claim(["default"], 1, 1.0, now + n * 10)
        [failed] = await backend.recover_expired(now + n * 10 + 2, 0, Retention(keep_failed=2))
        assert failed.state is JobState.FAILED and "lease expired 1 times" in (failed.error or "")
    kept = await backend.list_jobs(state=JobState.FAILED, name=None, queue=None, limit=10, offset=0)
    assert [j.id for j in kept] == [j.id for j in jobs[:0:-1]]


async def test_claim_over_many_queues_keeps_the_global_order(backend: SQLiteBackend) -> None:
    # More queues than the per-queue UNION ALL form handles: the IN-list form.
    queues = [f"q{i}" for i in range(40)]
    jobs = [new_job(q, priority=(i * 7) % 3) for i, q in enumerate(queues)]
    await backend.enqueue(jobs)
    for n in (1, 5, 40):
        claimed = await backend.claim(queues[:n], 100, 30, time.time())
        expected = sorted(
            (j for j in jobs if j.queue in queues[:n]), key=lambda j: (j.priority, j.run_at)
        )
        assert [j.id for j in claimed] == [j.id for j in expected]
        jobs = [j for j in jobs if j.queue not in queues[:n]]


async def test_a_call_waits_for_the_lock_up_to_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    b = SQLiteBackend(url_for(path, "?busy_timeout=1000"))
    await b.open()
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        raw.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: raw.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        [job] = await b.enqueue([new_job()])  # waits out the other writer
        assert time.monotonic() - started >= 0.25
        release.join()
        assert await b.get(job.id) is not None

        raw.execute("BEGIN IMMEDIATE")  # and now never lets go
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="locked"):
            await b.enqueue([new_job()])
        assert time.monotonic() - started >= 0.9  # it waited its busy_timeout
        raw.execute("ROLLBACK")
        assert (await b.stats())["default"]["queued"] == 1
    finally:
        raw.close()
        await b.close()


# --------------------------------------------------------------------------- concurrency


async def drain(b: SQLiteBackend, seen: list[str], rng: random.Random) -> None:
    while True:
        jobs = await b.claim(["default"], rng.randint(1, 40), 60, time.time())
        if not jobs:
            return
        seen.extend(j.id for j in jobs)
        at = time.time()
        outcomes = [Outcome(j.id, j.token, OutcomeKind.COMPLETED, at) for j in jobs]
        assert all(await b.finish(outcomes, Retention(keep_completed=None)))


async def test_two_backends_on_one_file_never_claim_the_same_job(tmp_path: Path) -> None:
    url = url_for(tmp_path / "jobs.db")
    one, two = SQLiteBackend(url), SQLiteBackend(url)
    await one.open()
    await two.open()
    try:
        ids = [j.id for j in await one.enqueue([new_job() for _ in range(2000)])]
        seen_one: list[str] = []
        seen_two: list[str] = []
        await asyncio.gather(
            drain(one, seen_one, random.Random(1)), drain(two, seen_two, random.Random(2))
        )
        assert seen_one and seen_two  # both really took part
        counts = Counter(seen_one + seen_two)
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1
        stats = await two.stats()
        assert stats["default"]["completed"] == 2000
    finally:
        await one.close()
        await two.close()


CLAIMER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from conveyor.backends.base import Outcome, OutcomeKind, Retention
    from conveyor.backends.sqlite import SQLiteBackend

    async def main():
        b = SQLiteBackend(sys.argv[1])
        await b.open()
        seen = []
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1.0:
            jobs = await b.claim(["default"], 25, 60, time.time())
            if not jobs:
                await b.wait_for_work(["default"], 0.1)
                continue
            idle_since = time.monotonic()
            seen += [j.id for j in jobs]
            at = time.time()
            await b.finish([Outcome(j.id, j.token, OutcomeKind.COMPLETED, at) for j in jobs],
                           Retention(keep_completed=None))
        await b.close()
        print(json.dumps(seen))

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_worker_processes_and_a_producer_share_one_file(tmp_path: Path) -> None:
    url = url_for(tmp_path / "jobs.db")
    producer = SQLiteBackend(url)
    await producer.open()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLAIMER, url, stdout=subprocess.PIPE, env=env
            )
            for _ in range(3)
        ]
        ids: list[str] = []
        for _ in range(20):  # enqueue while they claim
            ids += [j.id for j in await producer.enqueue([new_job() for _ in range(50)])]
            await asyncio.sleep(0.01)
        outputs = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0]
        seen = [i for out, _ in outputs for i in json.loads(out)]
        assert sorted(seen) == sorted(ids)
    finally:
        await producer.close()


async def test_usable_from_two_event_loops(backend: SQLiteBackend) -> None:
    """The blocking twins run on a helper thread's loop while the worker's
    loop waits: an enqueue there must wake a waiter here."""

    def produce() -> list[Job]:
        time.sleep(0.1)
        return asyncio.run(backend.enqueue([new_job()]))

    started = time.monotonic()
    waiting = asyncio.create_task(backend.wait_for_work(["default"], 5.0))
    made = await asyncio.to_thread(produce)
    await waiting
    assert time.monotonic() - started < 1.0
    assert [j.id for j in await backend.claim(["default"], 5, 30, time.time())] == [made[0].id]


# --------------------------------------------------------------------------- stores


def test_schedule_columns_follow_the_record() -> None:
    from conveyor.backends.sqlite.sql import SCHEDULE_COLS

    columns = [c.strip() for c in SCHEDULE_COLS.split(",")]
    assert columns == [f.name for f in dataclasses.fields(ScheduleRecord)]


def schedule(name: str, next_run: float) -> ScheduleRecord:
    return ScheduleRecord(
        name=name,
        job_name="task",
        payload="{}",
        cron=None,
        every=60.0,
        tz="UTC",
        key=None,
        enabled=True,
        next_run=next_run,
        created_at=next_run,
        updated_at=next_run,
    )


async def test_each_tick_fires_once_across_backends(tmp_path: Path) -> None:
    url = url_for(tmp_path / "jobs.db")
    one, two = SQLiteBackend(url), SQLiteBackend(url)
    start = time.time()
    await one.schedule_put(schedule("every-minute", start))
    try:
        for tick in range(20):
            expected = start + tick * 60
            fired = await asyncio.gather(
                *(
                    b.schedule_fire("every-minute", expected, expected + 60, expected, None, [job])
                    for b, job in ((one, new_job("cron")), (two, new_job("cron")))
                )
            )
            assert sum(result is not None for result in fired) == 1
        assert (await two.stats())["cron"]["queued"] == 20
        record = await two.schedule_get("every-minute")
        assert record is not None and record.next_run == start + 20 * 60
    finally:
        await one.close()
        await two.close()


async def test_a_lock_is_exclusive_across_backends(tmp_path: Path) -> None:
    url = url_for(tmp_path / "jobs.db")
    one, two = SQLiteBackend(url), SQLiteBackend(url)
    now = time.time()
    try:
        assert await one.lock_acquire("sync", "a", 10, now)
        assert not await two.lock_acquire("sync", "b", 10, now + 5)
        assert not await two.lock_release("sync", "b")
        assert await one.lock_extend("sync", "a", 10, now + 5)
        assert not await two.lock_acquire("sync", "b", 10, now + 12)
        assert await two.lock_acquire("sync", "b", 10, now + 15)  # expired: taken over
        assert not await one.lock_extend("sync", "a", 10, now + 16)
        assert await two.lock_release("sync", "b")
        assert await one.lock_acquire("sync", "a", 10, now)
    finally:
        await one.close()
        await two.close()


# --------------------------------------------------------------------------- waking


async def wait_time(b: SQLiteBackend, queues: list[str], timeout: float, during: Any) -> float:
    started = time.monotonic()
    waiting = asyncio.create_task(b.wait_for_work(queues, timeout))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await during()
    await waiting
    return time.monotonic() - started


async def test_data_version_wakes_a_waiter_on_another_connection(tmp_path: Path) -> None:
    url = url_for(tmp_path / "jobs.db")
    waiter, producer = SQLiteBackend(url), SQLiteBackend(url)
    await waiter.open()
    await producer.open()
    try:

        async def enqueue() -> None:
            await producer.enqueue([new_job("mail")])

        # No in-process notification crosses backend objects: only the file does.
        assert await wait_time(waiter, ["mail"], 5.0, enqueue) < 0.5

        async def enqueue_elsewhere() -> None:
            await producer.enqueue([new_job("other")])

        # A commit that brings no work for these queues does not end the wait.
        await waiter.claim(["mail"], 10, 30, time.time())
        assert await wait_time(waiter, ["mail"], 0.4, enqueue_elsewhere) >= 0.35
    finally:
        await waiter.close()
        await producer.close()


async def test_wait_ends_when_the_next_scheduled_job_is_due(tmp_path: Path) -> None:
    url = url_for(tmp_path / "jobs.db")
    waiter, producer = SQLiteBackend(url), SQLiteBackend(url)
    await waiter.open()
    await producer.open()
    try:

        async def schedule() -> None:
            await producer.enqueue([new_job(delay=0.3)])

        elapsed = await wait_time(waiter, ["default"], 5.0, schedule)
        assert 0.25 < elapsed < 1.0
        [job] = await waiter.claim(["default"], 1, 30, time.time())
        assert job.attempts == 1
    finally:
        await waiter.close()
        await producer.close()


async def test_wait_returns_at_once_when_work_is_there(backend: SQLiteBackend) -> None:
    await backend.enqueue([new_job()])
    started = time.monotonic()
    await backend.wait_for_work(["default"], 5.0)
    assert time.monotonic() - started < 0.2


# --------------------------------------------------------------------------- differential


def snapshot(value: Any) -> Any:
    if isinstance(value, Job):
        d = value.to_dict()
        d.update(
            duplicate=value.duplicate, cancel_requested=value.cancel_requested, token=value.token
        )
        return d
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    return value


async def random_ops(seed: int, tmp_path: Path, steps: int = 200) -> None:
    """Drive the memory and SQLite backends through the same random calls and
    require the same answer from both at every step."""
    rng = random.Random(seed)
    mem = MemoryBackend()
    sql = SQLiteBackend(url_for(tmp_path / f"diff-{seed}.db"))
    await sql.open()
    base = now = time.time()
    ids: list[str] = []
    tokens: dict[str, str] = {}
    queues = ["a", "b", "c"]
    retention = Retention(
        keep_completed=rng.choice([None, 0, 2, 5]), keep_failed=rng.choice([None, 0, 1, 3])
    )
    ops = ["enqueue"] * 4 + ["claim"] * 3 + ["heartbeat", "finish", "finish", "progress"]
    ops += ["recover_expired", "get", "get_by_key", "list_jobs", "cancel", "retry", "stats"]
    ops += ["purge", "unclaim"]
    ops += ["schedule_put", "schedule_get", "schedule_list", "schedule_delete"]
    ops += ["schedule_due", "schedule_fire", "schedule_fire"]
    ops += ["lock_acquire", "lock_release", "lock_extend", "cache_set", "cache_get"]
    ops += ["cache_delete", "tick"]
    next_runs: dict[str, float] = {}  # schedule name -> next_run last put or fired

    def pick(n: int) -> list[str]:
        return rng.sample(sorted(tokens), min(len(tokens), n))

    try:
        for step in range(steps):
            now += 0.001  # distinct finish times, as in real life
            op = rng.choice(ops)
            args: tuple[Any, ...] = ()
            kwargs: dict[str, Any] = {}
            if op == "tick":
                now += rng.choice([0.5, 5, 50, 500])
                continue
            if op == "enqueue":
                batch = [
                    new_job(
                        rng.choice(queues),
                        key=rng.choice([None, None, f"k{rng.randint(0, 15)}"]),
                        priority=rng.choice([0, 0, 1, -1]),
                        created_at=now,
                        run_at=rng.choice([base - 10, base + rng.choice([100, 1000, 3000])]),
                    )
                    for _ in range(rng.randint(1, 6))
                ]
                ids += [j.id for j in batch]
                args = (batch,)
            elif op == "claim":
                args = (rng.sample(queues, rng.randint(1, 3)), rng.randint(1, 5), 50.0, now)
                # The same claim id on both: the same tokens, compared below.
                kwargs = {"claim_id": f"claim-{step}"}
            elif op == "unclaim":
                args = (f"claim-{rng.randint(max(0, step - 20), step)}", now)
            elif op == "heartbeat":
                beats = [
                    Heartbeat(
                        i, rng.choice([tokens[i]] * 2 + ["stale"]), [{"m": 1}] * rng.randint(0, 1)
                    )
                    for i in pick(3)
                ]
                args = (beats, 50.0, now)
            elif op == "finish":
                outcomes = [
                    Outcome(
                        i,
                        rng.choice([tokens[i]] * 3 + ["stale"]),
                        rng.choice(list(OutcomeKind)),
                        # Distinct finish times: on a tie, memory trims in
                        # call order and SQLite in enqueue order.
                        now + n * 1e-5,
                        result=rng.choice([None, '{"r": 1}']),
                        error=rng.choice([None, "boom"]),
                        run_at=rng.choice([None, now - 1, now + 100]),
                        logs=[{"x": 1}] * rng.randint(0, 1),
                        progress=rng.choice([None, 42.0]),
                    )
                    for n, i in enumerate(pick(4))
                ]
                args = (outcomes, retention)
            elif op == "progress":
                if not tokens:
                    continue
                job_id = rng.choice(sorted(tokens))
                args = (job_id, rng.choice([tokens[job_id], "stale"]), rng.choice([None, 9.0]), [])
            elif op == "recover_expired":
                # Jobs failed by one recovery share a finish time, and a tie
                # is trimmed in claim order by memory, in enqueue order by
                # SQLite: so stalls only fail jobs when nothing trims them.
                stalls = rng.randint(0, 2) if retention.keep_failed is None else 99
                args = (now, stalls, retention)
            elif op in ("get", "cancel", "retry"):
                args = (rng.choice([*ids, "missing"]),) + (() if op == "get" else (now,))
            elif op == "get_by_key":
                args = (f"k{rng.randint(0, 15)}",)
            elif op == "list_jobs":
                kwargs = {
                    "state": rng.choice([None, *JobState]),
                    "name": rng.choice([None, "task"]),
                    "queue": rng.choice([None, "a"]),
                    "limit": rng.randint(1, 20),
                    "offset": rng.randint(0, 3),
                }
            elif op == "schedule_put":
                name = f"s{rng.randint(0, 4)}"
                next_runs[name] = now + rng.choice([-1, 0, 30])
                record = ScheduleRecord(
                    name=name,
                    job_name="task",
                    payload='{"n": 1}',
                    cron=rng.choice([None, "0 9 * * *"]),
                    every=rng.choice([None, 60.0]),
                    tz="Europe/Paris",
                    key=rng.choice([None, "sk"]),
                    enabled=rng.random() < 0.8,
                    next_run=next_runs[name],
                    created_at=now,
                    updated_at=now,
                    last_run=rng.choice([None, now - 60]),
                    last_error=rng.choice([None, "bad"]),
                    catch_up=rng.choice(["once", "skip", "all"]),
                    max_catch_up=rng.randint(1, 100),
                    misfire_grace=rng.choice([0.0, 60.0]),
                    options=rng.choice(["{}", '{"queue": "a"}']),
                )
                args = (record,)
            elif op in ("schedule_get", "schedule_delete"):
                args = (f"s{rng.randint(0, 4)}",)
            elif op == "schedule_due":
                args = (now, rng.randint(1, 5))
            elif op == "schedule_fire":
                name = f"s{rng.randint(0, 4)}"
                expected_next = next_runs.get(name, now) + rng.choice([0, 0, 1])
                jobs = [new_job("a", key=rng.choice([None, f"k{rng.randint(0, 15)}"]))]
                jobs *= rng.randint(0, 1)
                ids += [j.id for j in jobs]
                args = (name, expected_next, now + 60, rng.choice([None, now]), None, jobs)
            elif op in ("lock_acquire", "lock_extend"):
                args = (f"l{rng.randint(0, 2)}", f"t{rng.randint(0, 2)}", 100.0, now)
            elif op == "lock_release":
                args = (f"l{rng.randint(0, 2)}", f"t{rng.randint(0, 2)}")
            elif op == "cache_set":
                args = (f"c{rng.randint(0, 3)}", str(step), rng.choice([None, 1.0, 100.0]), now)
            elif op == "cache_get":
                args = (f"c{rng.randint(0, 3)}", now)
            elif op == "cache_delete":
                args = (f"c{rng.randint(0, 3)}",)
            elif op == "purge":
                args = (
                    rng.sample(list(JobState), rng.randint(1, 3)),
                    rng.choice([None, now, base + 5000]),
                    rng.choice([None, "b"]),
                )
            expected = await getattr(mem, op)(*args, **kwargs)
            actual = await getattr(sql, op)(*args, **kwargs)
            if op == "recover_expired":  # the order of recovered jobs is not specified
                expected.sort(key=lambda j: j.id)
                actual.sort(key=lambda j: j.id)
            assert snapshot(actual) == snapshot(expected), f"seed {seed} step {step}: {op}"
            if op == "claim":
                tokens.update((j.id, j.token) for j in expected)
            if op == "schedule_fire" and expected is not None:
                next_runs[args[0]] = args[2]
        everything: dict[str, Any] = {
            "state": None,
            "name": None,
            "queue": None,
            "limit": 10**6,
            "offset": 0,
        }
        assert snapshot(await sql.list_jobs(**everything)) == snapshot(
            await mem.list_jobs(**everything)
        )
    finally:
        await sql.close()


@pytest.mark.parametrize("seed", range(6))
async def test_behaves_like_the_memory_backend(seed: int, tmp_path: Path) -> None:
    await random_ops(seed, tmp_path)
