"""Real worker processes on one SQLite file while a third process keeps the
write lock for longer than the lease: no running job is taken from its
(healthy) worker, run twice or left stalled, and all of them complete."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState

from .helpers import WorkerProcess, eventually, starts

pytestmark = [pytest.mark.slow, pytest.mark.sqlite]

LEASE = 2.0
HOLD = 5.0  # more than twice the lease
JOBS = 4


def test_holding_the_write_lock_past_the_lease_takes_no_job_from_a_live_worker(
    producer: Conveyor,
    app_dir: Path,
    db_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    log = app_dir / "starts.log"
    # Long enough to be running before, during and after the stall.
    jobs = producer.enqueue_many_sync([("sleepy", {"seconds": 9.0}) for _ in range(JOBS)])
    workers = [start_worker("--lease", str(LEASE), "--concurrency", "2") for _ in range(2)]
    eventually(lambda: len(starts(log)) == JOBS, "every job to start")
    assert len({pid for _, _, pid in starts(log)}) == 2, "each worker runs two jobs"

    path = db_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # every heartbeat and recovery now waits
        held_until = time.monotonic() + HOLD
        while time.monotonic() < held_until:  # the stall under test, not a sync
            time.sleep(0.1)
        holder.execute("ROLLBACK")
    finally:
        holder.close()

    for job in jobs:
        done = producer.wait_sync(job.id, timeout=30)
        assert done.state is JobState.COMPLETED, (done.error, [w.output() for w in workers])
        assert done.attempts == 1 and done.stalls == 0, done
    rows = starts(log)
    assert sorted(job_id for job_id, _, _ in rows) == sorted(job.id for job in jobs), rows
    assert all(attempt == 1 for _, attempt, _ in rows), rows
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait() == 0, worker.output()
        output = worker.output()
        assert "lost its lease" not in output, output
        assert "lease expired" not in output, output
