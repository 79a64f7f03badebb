"""`conveyor worker APP --burst` as a real process: it runs what is due and
exits 0 once the queues it serves have nothing due and nothing runs in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState

from .helpers import WAIT, run_conveyor

pytestmark = pytest.mark.slow

BURST_APP = """
from conveyor import Conveyor, JobContext

app = Conveyor()  # the URL comes from CONVEYOR_URL


@app.job("fanout")
async def fanout(payload: dict, ctx: JobContext) -> int:
    for n in range(payload["children"]):
        await app.enqueue("leaf", {"n": n})
    return payload["children"]


@app.job("leaf")
def leaf(payload: dict) -> int:
    return payload["n"] * 2


@app.job("flaky", retries=2, backoff=0)  # the retry is due at once
async def flaky(payload: dict, ctx: JobContext) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt
"""


@pytest.fixture
def burst_app(tmp_path: Path, db_url: str) -> Conveyor:
    (tmp_path / "burstapp.py").write_text(BURST_APP)
    producer = Conveyor(db_url)
    for name in ("fanout", "leaf", "flaky"):
        producer.job(name)(lambda payload: None)
    return producer


def burst_env(db_url: str, **extra: str) -> dict[str, str]:
    return dict(os.environ, CONVEYOR_URL=db_url, **extra)


def test_burst_worker_exits_0_once_the_queues_are_empty(
    tmp_path: Path, db_url: str, burst_app: Conveyor
) -> None:
    fanout = burst_app.enqueue_sync("fanout", {"children": 5})
    flaky = burst_app.enqueue_sync("flaky", {})
    later = burst_app.enqueue_sync("leaf", {"n": 99}, delay=3600)
    try:
        done = run_conveyor("worker", "burstapp", "--burst", cwd=tmp_path, env=burst_env(db_url))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "burst over" in done.stderr, done.stderr
        assert burst_app.get_job_sync(fanout.id).result == 5
        leaves = burst_app.list_jobs_sync(state=JobState.COMPLETED, name="leaf")
        assert sorted(job.result for job in leaves) == [0, 2, 4, 6, 8]
        retried = burst_app.get_job_sync(flaky.id)
        assert (retried.state, retried.attempts) == (JobState.COMPLETED, 2)
        # Not due yet: left for a later run, and not waited for.
        assert burst_app.get_job_sync(later.id).state is JobState.SCHEDULED
        assert burst_app.stats_sync()["default"]["running"] == 0
    finally:
        burst_app.close_sync()


def test_burst_from_the_environment_and_with_nothing_due(
    tmp_path: Path, db_url: str, burst_app: Conveyor
) -> None:
    try:
        env = burst_env(db_url, CONVEYOR_BURST="true")
        done = run_conveyor("worker", "burstapp", cwd=tmp_path, env=env, timeout=WAIT)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "burst over" in done.stderr, done.stderr
        # in the order it happened
        assert done.stderr.index(" started: ") < done.stderr.index("burst over"), done.stderr
    finally:
        burst_app.close_sync()


def test_a_burst_that_leaves_a_paused_queue_says_so(
    tmp_path: Path, db_url: str, burst_app: Conveyor
) -> None:
    """A paused queue's due jobs are not run: the burst ends, and its last
    line names the queue left paused rather than claim nothing was due."""
    try:
        waiting = burst_app.enqueue_sync("leaf", {"n": 1})
        assert burst_app.pause_sync("default")
        done = run_conveyor("worker", "burstapp", "--burst", cwd=tmp_path, env=burst_env(db_url))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "burst over" in done.stderr, done.stderr
        assert "paused, left as they are: default" in done.stderr, done.stderr
        assert done.stderr.index(" started: ") < done.stderr.index("burst over"), done.stderr
        assert burst_app.get_job_sync(waiting.id).state is JobState.QUEUED
    finally:
        burst_app.close_sync()
