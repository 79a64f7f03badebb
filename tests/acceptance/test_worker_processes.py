"""Real worker processes on a SQLite file and on PostgreSQL: SIGKILL mid-job,
and SIGTERM."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState

from .helpers import WorkerProcess, eventually, invoke, starts

pytestmark = pytest.mark.slow


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """The backend the worker processes share (this module's own matrix)."""
    maker: Callable[[], str] = request.getfixturevalue(f"{request.param}_urls")
    return maker()


def _started(log: Path, job_id: str, count: int = 1) -> bool:
    return sum(1 for row in starts(log) if row[0] == job_id) >= count


def _completed(app: Conveyor, name: str) -> int:
    return len(app.list_jobs_sync(state=JobState.COMPLETED, name=name, limit=1000))


def test_killed_worker_job_is_run_again_by_the_next_worker(
    producer: Conveyor, app_dir: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    log = app_dir / "starts.log"
    # Priority -1: the slow job is claimed first, so it is surely running
    # while the first worker also works through the quick ones.
    slow = producer.enqueue_sync("crash.slow", {}, priority=-1)
    first_quick = producer.enqueue_many_sync([("crash.quick", {"n": n}) for n in range(10)])

    first = start_worker("--lease", "1", "--concurrency", "4")
    eventually(lambda: _started(log, slow.id), "the slow job to start")
    # Kill only once the quick jobs are acknowledged: one killed mid-run would
    # rightly run twice (at-least-once), and this test checks the others don't.
    eventually(lambda: _completed(producer, "crash.quick") == 10, "the first quick jobs")
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL

    second_quick = producer.enqueue_many_sync([("crash.quick", {"n": n}) for n in range(10, 20)])
    second = start_worker("--lease", "1", "--concurrency", "4")

    done = producer.wait_sync(slow.id, timeout=20)
    assert done.state is JobState.COMPLETED, done.error
    assert done.attempts == 2
    assert done.result == {"attempt": 2}
    eventually(lambda: _completed(producer, "crash.quick") == 20, "the second quick jobs")

    rows = starts(log)
    slow_runs = [(attempt, pid) for job_id, attempt, pid in rows if job_id == slow.id]
    assert slow_runs == [(1, first.pid), (2, second.pid)], rows
    runs = Counter(job_id for job_id, _, _ in rows if job_id != slow.id)
    quick_ids = {job.id for job in [*first_quick, *second_quick]}
    assert set(runs) == quick_ids
    assert all(count == 1 for count in runs.values()), runs

    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.output()


def test_sigterm_lets_a_running_job_finish(
    producer: Conveyor, app_dir: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    job = producer.enqueue_sync("sleepy", {"seconds": 1.0})
    worker = start_worker("--shutdown-timeout", "5")
    eventually(lambda: _started(app_dir / "starts.log", job.id), "the job to start")

    stopped_at = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0, worker.output()
    assert time.monotonic() - stopped_at < 5.0, worker.output()

    finished = producer.get_job_sync(job.id)
    assert finished is not None
    assert finished.state is JobState.COMPLETED, worker.output()
    assert finished.result == "slept"


@pytest.mark.parametrize("name", ["sleepy", "sleepy.sync"])
def test_sigterm_hands_back_a_job_that_outlives_the_shutdown_timeout(
    name: str,
    producer: Conveyor,
    app_dir: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    log = app_dir / "starts.log"
    job = producer.enqueue_sync(name, {"seconds": 30})
    first = start_worker("--shutdown-timeout", "1")
    eventually(lambda: _started(log, job.id), "the job to start")

    stopped_at = time.monotonic()
    first.signal(signal.SIGTERM)
    # The sync variant's thread ignores cancellation: the process must exit anyway.
    assert first.wait(timeout=10) == 0, first.output()
    assert time.monotonic() - stopped_at < 3.5, first.output()

    handed_back = producer.get_job_sync(job.id)
    assert handed_back is not None
    assert handed_back.state is JobState.QUEUED, first.output()
    assert handed_back.attempts == 0

    # Queued, not waiting for a lease to expire (the default lease is 30 s):
    # the next worker takes it at once.
    (app_dir / "hurry").touch()
    second = start_worker()
    done = producer.wait_sync(job.id, timeout=10)
    assert done.state is JobState.COMPLETED
    assert done.result == "hurried"
    assert [(a, p) for j, a, p in starts(log) if j == job.id] == [(1, first.pid), (1, second.pid)]
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.output()


def test_cancel_command_stops_a_job_running_in_a_worker(
    producer: Conveyor,
    db_url: str,
    app_dir: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    job = producer.enqueue_sync("sleepy", {"seconds": 60})
    worker = start_worker()
    eventually(lambda: _started(app_dir / "starts.log", job.id), "the job to start")

    result = invoke("--url", db_url, "cancel", job.id)
    assert result.exit_code == 0, result.output
    assert "cancel requested" in result.stdout
    # The worker learns it at its next heartbeat (every second) and stops the handler.
    done = producer.wait_sync(job.id, timeout=10)
    assert done.state is JobState.CANCELLED, worker.output()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
