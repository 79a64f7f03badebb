"""The SQLite write lock and the leases: what waiting for the lock may cost.

Every SQLite writer takes the one write lock of the file. These tests hold it
from outside (a plain sqlite3 connection, or a conveyor process frozen with
SIGSTOP in the middle of a transaction) and check two promises:

* a heartbeat never queues behind another call of the same backend that is
  waiting for the lock: once the lock is free, the heartbeat goes first;
* a lease does not run out while the database cannot be written: a job whose
  worker was only kept from heartbeating by the lock is not recovered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends.base import Heartbeat, LeaseStatus, NewJob
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.job import BackendUnavailableError, Job, new_job_id

pytestmark = pytest.mark.sqlite

WAIT = 20.0


def new_job() -> NewJob:
    now = time.time()
    return NewJob(
        id=new_job_id(),
        name="task",
        queue="default",
        payload=json.dumps({}),
        priority=0,
        max_retries=3,
        timeout=None,
        key=None,
        created_at=now,
        run_at=now,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
async def backend(db_path: Path) -> AsyncIterator[SQLiteBackend]:
    b = SQLiteBackend(f"sqlite:///{db_path}")
    await b.open()
    yield b
    await b.close()


@contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the file's write lock from a connection of its own until the block
    ends (the way another process's long or frozen transaction holds it)."""
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield raw
        finally:
            raw.execute("ROLLBACK")
    finally:
        raw.close()


async def claim_one(backend: SQLiteBackend, lease: float) -> Job:
    await backend.enqueue([new_job()])
    [job] = await backend.claim(["default"], 1, lease, time.time())
    return job


async def submitted(task: asyncio.Task[Any]) -> None:
    """Let `task` run up to its first wait: its call is then in the backend's
    queue (the backend hands a call to its thread before it first waits)."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()


async def test_a_heartbeat_goes_before_a_write_that_waited_for_the_lock_first(
    backend: SQLiteBackend, db_path: Path
) -> None:
    job = await claim_one(backend, lease=30.0)
    finished: list[str] = []

    def note(name: str) -> Any:
        return lambda _task: finished.append(name)

    with write_lock_held(db_path):
        write = asyncio.create_task(backend.enqueue([new_job()]))
        write.add_done_callback(note("enqueue"))
        await submitted(write)
        await asyncio.sleep(0.3)  # the enqueue waits for the lock meanwhile
        beat = asyncio.create_task(
            backend.heartbeat([Heartbeat(job.id, job.token)], 30.0, time.time())
        )
        beat.add_done_callback(note("heartbeat"))
        await submitted(beat)
        assert not write.done()
    # The lock is free: the heartbeat must not wait for the enqueue that was
    # queued before it (nor for that enqueue's retries, had it any left).
    statuses, _ = await asyncio.wait_for(asyncio.gather(beat, write), WAIT)
    assert statuses == [LeaseStatus.HELD]
    assert finished == ["heartbeat", "enqueue"]


async def test_a_lease_does_not_run_out_while_another_connection_holds_the_lock(
    db_path: Path,
) -> None:
    """Worker A holds a job with a 1 s lease; another connection keeps the
    write lock for 2.5 s, so A's heartbeat cannot be stored and worker B's
    recovery cannot run. When the lock frees, B's recovery must not take the
    job (its worker is alive: it only waited for the lock), and A keeps it."""
    url = f"sqlite:///{db_path}"
    a, b = SQLiteBackend(url), SQLiteBackend(url)
    await a.open()
    await b.open()
    try:
        job = await claim_one(a, lease=1.0)
        with write_lock_held(db_path):
            beat = asyncio.create_task(
                a.heartbeat([Heartbeat(job.id, job.token)], 1.0, time.time())
            )
            recovery = asyncio.create_task(b.recover_expired(time.time(), 1))
            await submitted(beat)
            await submitted(recovery)
            await asyncio.sleep(2.5)  # the stall being tested, not a wait for an event
            assert not beat.done()
        assert await asyncio.wait_for(beat, WAIT) == [LeaseStatus.HELD]
        assert await asyncio.wait_for(recovery, WAIT) == []
        # Later calls see the time at which they are made; the lease that the
        # held-up heartbeat stored runs from when it was stored.
        assert await b.recover_expired(time.time(), 1) == []
        beat_now = await a.heartbeat([Heartbeat(job.id, job.token)], 1.0, time.time())
        assert beat_now == [LeaseStatus.HELD]
        stored = await b.get(job.id)
        assert stored is not None and stored.stalls == 0 and stored.attempts == 1
    finally:
        await a.close()
        await b.close()


async def test_a_lease_that_ran_out_before_the_lock_was_taken_is_still_recovered(
    backend: SQLiteBackend, db_path: Path
) -> None:
    """The allowance is for time the database could not be written, not for
    a worker that was already gone before."""
    job = await claim_one(backend, lease=0.2)
    await asyncio.sleep(0.5)  # the lease runs out (a duration, not a wait for an event)
    with write_lock_held(db_path):
        recovery = asyncio.create_task(backend.recover_expired(time.time(), 1))
        await submitted(recovery)
        await asyncio.sleep(1.0)  # a stall longer than the allowance threshold
    [recovered] = await asyncio.wait_for(recovery, WAIT)
    assert recovered.id == job.id


# A conveyor process that, when told to, stops in the middle of a write
# transaction (it holds the write lock) and waits there to be frozen.
FROZEN_HOLDER = textwrap.dedent(
    """
    import asyncio, sys, time
    from conveyor.backends.sqlite import SQLiteBackend
    from conveyor.backends.sqlite.writer import write_transaction

    def hold(conn):
        with write_transaction(conn):
            conn.execute("UPDATE conveyor_jobs SET progress = 1")
            print("holding", flush=True)
            # SIGSTOP lands during this sleep; after SIGCONT it has run out.
            time.sleep(1.0)

    async def main():
        b = SQLiteBackend(sys.argv[1])
        await b.open()
        print("ready", flush=True)
        sys.stdin.readline()
        await b._call(hold)
        await b.close()
        print("done", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_a_process_frozen_while_holding_the_lock_costs_no_lease(db_path: Path) -> None:
    """SIGSTOP hits a conveyor process inside a write transaction and lasts
    longer than the lease; after SIGCONT, the held job is not recovered."""
    url = f"sqlite:///{db_path}"
    a = SQLiteBackend(url)
    await a.open()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FROZEN_HOLDER,
        url,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), WAIT) == b"ready\n"
        job = await claim_one(a, lease=1.0)
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(holder.stdout.readline(), WAIT) == b"holding\n"
        holder.send_signal(signal.SIGSTOP)
        await asyncio.sleep(2.5)  # the freeze being tested, longer than the lease
        holder.send_signal(signal.SIGCONT)
        out, _ = await asyncio.wait_for(holder.communicate(), WAIT)
        assert holder.returncode == 0 and out.strip() == b"done"
        # Nothing of this process waited for the lock meanwhile: the frozen
        # process itself accounted for the time it held the lock.
        assert await a.recover_expired(time.time(), 1) == []
        assert await a.heartbeat([Heartbeat(job.id, job.token)], 1.0, time.time()) == [
            LeaseStatus.HELD
        ]
    finally:
        if holder.returncode is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
            await holder.wait()
        await a.close()


async def test_opening_a_database_another_process_holds_locked_says_it_is_busy(
    tmp_path: Path,
) -> None:
    """The file exists and is a database: the error must say it is busy, not
    only "database is locked"."""
    path = tmp_path / "busy.db"
    first = SQLiteBackend(f"sqlite:///{path}")
    await first.open()
    await first.close()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        busy = SQLiteBackend(f"sqlite:///{path}?busy_timeout=100")
        with pytest.raises(BackendUnavailableError, match=r"busy.*busy_timeout"):
            await busy.open()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def assert_a_freeze_costs_no_lease(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, freeze_after: bool
) -> None:
    """Freeze (2.5 s, longer than the lease) the first write transaction of
    one backend at `writer.<step>` (before or after the step runs), with the
    write lock held; then that backend's lease recovery, run first, must leave
    another backend's claimed job alone, and its heartbeat must still hold."""
    from conveyor.backends.sqlite import writer

    url = f"sqlite:///{db_path}"
    healthy, frozen = SQLiteBackend(url), SQLiteBackend(url)
    await healthy.open()
    await frozen.open()
    try:
        job = await claim_one(healthy, lease=1.0)
        real = getattr(writer, step)
        froze: list[float] = []

        def freeze_once(conn: Any) -> None:
            if freeze_after:
                real(conn)
            if not froze and threading.current_thread().name.startswith("conveyor-sqlite"):
                froze.append(time.time())
                time.sleep(2.5)  # the process is stopped with the lock held
            if not freeze_after:
                real(conn)

        monkeypatch.setattr(writer, step, freeze_once)
        await frozen.enqueue([new_job()])  # the frozen transaction
        monkeypatch.setattr(writer, step, real)
        assert froze, "the freeze happened"
        # The healthy worker's heartbeats were refused meanwhile; the resumed
        # worker's recovery runs first and must leave the job alone.
        assert await frozen.recover_expired(time.time(), 1) == []
        assert await healthy.heartbeat([Heartbeat(job.id, job.token)], 1.0, time.time()) == [
            LeaseStatus.HELD
        ]
    finally:
        await healthy.close()
        await frozen.close()


async def test_a_freeze_right_after_taking_the_lock_counts_as_holding_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker frozen between its BEGIN IMMEDIATE and the first statement of
    its transaction holds the write lock all along: when it resumes, the
    leases of healthy workers (whose heartbeats could not be stored) must be
    made up for before its own lease recovery runs, or it takes their jobs."""
    await assert_a_freeze_costs_no_lease(db_path, monkeypatch, "_lock_taken", freeze_after=False)


async def test_a_freeze_during_commit_counts_as_holding_the_lock(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker frozen after it measured how long it held the lock, but before
    its COMMIT finished (SIGSTOP while SQLite writes the WAL frames), held the
    lock through the freeze. Resumed, its next transaction (a lease recovery,
    due long ago) must not take the healthy worker's job, whose heartbeats and
    acknowledgement could not be stored meanwhile."""
    await assert_a_freeze_costs_no_lease(db_path, monkeypatch, "_before_commit", freeze_after=True)
