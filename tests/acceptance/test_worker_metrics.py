"""`conveyor worker --metrics-port N`: a real worker process serves Prometheus
metrics over HTTP, and the figures move as it runs jobs (completed, failed
for good, retried), recovers a lost lease and abandons a stuck sync thread."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from availability import free_port
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor, JobState

from .helpers import WAIT, WorkerProcess, eventually

pytestmark = pytest.mark.slow

APP = """
import time
from conveyor import Conveyor, JobContext, Permanent

app = Conveyor()  # CONVEYOR_URL


@app.job("ok")
async def ok(payload: int) -> int:
    return payload


@app.job("bad", retries=0)
async def bad(payload: int) -> None:
    raise Permanent("bad payload")


@app.job("flaky", retries=1, backoff=0.1)
async def flaky(payload: int, ctx: JobContext) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "second"


@app.job("stuck", timeout=0.3, retries=0)
def stuck(payload: int) -> None:
    time.sleep(2)  # ignores ctx.is_cancelled(): its thread is abandoned a while
"""

Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Figures:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(figures: Figures, metric: str, /, **labels: str) -> float:
    return figures.get((metric, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def worker_with_metrics(tmp_path: Path, db_url: str) -> Iterator[tuple[int, Path]]:
    (tmp_path / "metricsapp.py").write_text(APP)
    port = free_port()
    args = ["metricsapp:app", "--metrics-port", str(port), "--recover-interval", "0.2"]
    worker = WorkerProcess(tmp_path, db_url, args, "worker")
    try:
        yield port, worker.log_path
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait()
        worker.close()


def test_a_worker_serves_metrics_that_move_with_its_jobs(
    worker_with_metrics: tuple[int, Path], db_url: str
) -> None:
    port, log = worker_with_metrics
    before = eventually(lambda: _try_scrape(port), "the metrics endpoint")
    assert value(before, "conveyor_worker_slots") == 10
    assert value(before, "conveyor_jobs_started_total", name="ok", queue="default") == 0

    producer = Conveyor(db_url)
    # The worker's defaults, which travel with each job (retries, timeout).
    producer.declare("ok")
    producer.declare("bad", retries=0)
    producer.declare("flaky", retries=1)
    producer.declare("stuck", timeout=0.3, retries=0)
    try:
        ids = [job.id for job in producer.enqueue_many_sync([("ok", n) for n in range(3)])]
        ids += [producer.enqueue_sync("bad", 1).id, producer.enqueue_sync("flaky", 1).id]
        # A job whose worker vanished: claimed here with a short lease and
        # never finished, so the worker's recovery (of every worker's jobs,
        # in any queue) takes it back.
        lost = producer.enqueue_sync("ok", 99, queue="elsewhere")
        asyncio.run(_claim_and_vanish(producer, lost.id))
        stuck = producer.enqueue_sync("stuck", 1)
        # A job in a queue nobody serves, to show in the queue gauges.
        waiting = producer.enqueue_sync("ok", 1, queue="nobody")

        def stuck_thread() -> Figures | None:
            figures = scrape(port)
            return figures if value(figures, "conveyor_worker_abandoned_threads") == 1 else None

        eventually(stuck_thread, "the stuck sync thread in the gauge")
        for job_id in ids:
            assert producer.wait_sync(job_id, timeout=WAIT).state in (
                JobState.COMPLETED,
                JobState.FAILED,
            )
        assert producer.wait_sync(stuck.id, timeout=WAIT).state is JobState.FAILED
        eventually(lambda: value(scrape(port), "conveyor_worker_abandoned_threads") == 0, "thread")

        def queue_gauges() -> Figures | None:
            figures = scrape(port)
            queued = value(figures, "conveyor_queue_jobs", queue="nobody", state="queued")
            # A refresh right as the job is written can find it due this
            # very moment (age 0): the next one (every 5 s) shows it waiting.
            age = value(figures, "conveyor_queue_oldest_job_age_seconds", queue="nobody")
            return figures if queued == 1 and age > 0 else None

        after = eventually(queue_gauges, "the queue gauges to refresh")
        recovered = producer.get_job_sync(lost.id)
    finally:
        producer.close_sync()

    def count(metric: str, name: str, queue: str = "default") -> float:
        return value(after, metric, name=name, queue=queue)

    assert count("conveyor_jobs_started_total", "ok") == 3
    assert count("conveyor_jobs_completed_total", "ok") == 3
    assert count("conveyor_jobs_failed_total", "bad") == 1
    assert count("conveyor_jobs_started_total", "flaky") == 2
    assert count("conveyor_jobs_retried_total", "flaky") == 1
    assert count("conveyor_jobs_completed_total", "flaky") == 1
    assert count("conveyor_jobs_failed_total", "stuck") == 1
    assert value(after, "conveyor_lease_recoveries_total") >= 1
    histogram = "conveyor_job_duration_seconds_count"
    assert value(after, histogram, name="ok", queue="default", outcome="completed") == 3
    assert value(after, histogram, name="flaky", queue="default", outcome="retrying") == 1
    assert value(after, histogram, name="bad", queue="default", outcome="failed") == 1
    stuck_seconds = value(
        after, "conveyor_job_duration_seconds_sum", name="stuck", queue="default", outcome="failed"
    )
    assert 0.25 <= stuck_seconds < 2  # the timeout, not the thread's sleep
    assert value(after, "conveyor_queue_jobs", queue="default", state="completed") == 4
    assert value(after, "conveyor_queue_jobs", queue="default", state="failed") == 2
    assert value(after, "conveyor_queue_oldest_job_age_seconds", queue="nobody") > 0
    assert value(after, "conveyor_queue_paused", queue="nobody") == 0
    assert value(after, "conveyor_worker_slots_in_use") == 0
    assert f"metrics at http://127.0.0.1:{port}/metrics" in log.read_text()
    assert waiting.state is JobState.QUEUED
    assert recovered is not None and (recovered.state, recovered.stalls) == (JobState.QUEUED, 1)


def _try_scrape(port: int) -> Figures | None:
    try:
        return scrape(port)
    except OSError:
        return None


async def _claim_and_vanish(producer: Conveyor, job_id: str) -> None:
    async with Conveyor(producer.url) as app:
        (claimed,) = await app.backend.claim(["elsewhere"], 1, 0.2, claim_id="vanished")
        assert claimed.id == job_id


def test_a_port_in_use_is_a_clear_error(tmp_path: Path, db_url: str) -> None:
    (tmp_path / "metricsapp.py").write_text(APP)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "conveyor",
                "worker",
                "metricsapp:app",
                "--metrics-port",
                str(port),
            ],
            cwd=tmp_path,
            env=dict(os.environ, CONVEYOR_URL=db_url),
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
    assert result.returncode != 0
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
