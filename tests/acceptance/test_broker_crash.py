"""Brokers with real worker processes: a worker killed with SIGKILL mid-job
leaves its message in flight; when the lease ends (SQS's visibility timeout,
Pub/Sub's ack deadline), the broker delivers it again and the next worker
completes it. SQS on moto's server and Pub/Sub on gcloud's emulator, each
with a store and without one."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState

from .helpers import JOB_NAMES, WorkerProcess, eventually, starts

pytestmark = pytest.mark.slow


@pytest.fixture(
    params=[
        pytest.param("sqs", marks=pytest.mark.sqs),
        pytest.param("sqs_bare", marks=pytest.mark.sqs),
        pytest.param("pubsub", marks=pytest.mark.pubsub),
        pytest.param("pubsub_bare", marks=pytest.mark.pubsub),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    maker: Callable[[], str] = request.getfixturevalue(f"{request.param}_urls")
    return maker()


@pytest.fixture
def producer(db_url: str) -> Iterator[Conveyor]:
    app = Conveyor(db_url)
    for name in JOB_NAMES:
        app.job(name, timeout=None)(lambda payload: None)
    yield app
    app.close_sync()


def _runs(log: Path, job_id: str) -> list[tuple[int, int]]:
    return [(attempt, pid) for jid, attempt, pid in starts(log) if jid == job_id]


def test_a_killed_workers_message_comes_back_and_completes(
    producer: Conveyor, app_dir: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    log = app_dir / "starts.log"
    slow = producer.enqueue_sync("crash.slow", {})
    first = start_worker("--lease", "2", "--concurrency", "2", "--poll-interval", "1")
    try:
        eventually(lambda: _runs(log, slow.id), "the slow job to start")
    except AssertionError:
        raise AssertionError(first.output()) from None
    killed_at = time.monotonic()
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL

    second = start_worker("--lease", "2", "--concurrency", "2", "--poll-interval", "1")
    eventually(lambda: len(_runs(log, slow.id)) == 2, "the job to run again", timeout=30)
    # Not before the message's visibility timeout (the lease) ran out.
    assert time.monotonic() - killed_at >= 1.0
    assert _runs(log, slow.id) == [(1, first.pid), (2, second.pid)]

    caps = producer.backend.capabilities
    if caps.lookup:
        done = producer.wait_sync(slow.id, timeout=20)
        assert done.state is JobState.COMPLETED, done.error
        assert done.attempts == 2
        assert done.result == {"attempt": 2}
    else:
        if caps.stats:
            # Acknowledged: the message is gone from the queue, nothing in flight.
            def drained() -> bool:
                counts = producer.stats_sync()["default"]
                return counts["queued"] == 0 and counts["running"] == 0

            eventually(drained, "the message to be deleted", timeout=20)
    time.sleep(3)  # past another visibility timeout: no third run
    assert len(_runs(log, slow.id)) == 2

    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.output()
