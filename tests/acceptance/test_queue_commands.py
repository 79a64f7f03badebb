"""`conveyor pause|resume QUEUE`, `conveyor workers` and the paused queues in
`conveyor stats`, against a real worker process on a SQLite file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.stores import RunningJobInfo, WorkerInfo, WorkerRegistry

from .helpers import WorkerProcess, eventually, invoke

pytestmark = pytest.mark.slow


def _workers_json(url: str, *flags: str) -> list[dict]:
    result = invoke("--url", url, "workers", "--json", *flags)
    assert result.exit_code == 0, result.output
    found: list[dict] = json.loads(result.stdout)
    return found


def test_pause_stops_a_worker_process_and_resume_brings_it_back(
    db_url: str,
    producer: Conveyor,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    producer.stats_sync()  # the file exists: admin commands do not create one
    paused = invoke("--url", db_url, "pause", "default")
    assert (paused.exit_code, paused.stdout.strip()) == (0, "queue default paused"), paused.output
    again = invoke("--url", db_url, "pause", "default")
    assert again.stdout.strip() == "queue default was paused already"
    worker = start_worker("--concurrency", "3")
    eventually(
        lambda: "queue default paused; not claiming from it" in worker.output(), "the pause line"
    )
    job = producer.enqueue_sync("crash.quick", {"n": 1})  # enqueues go on
    stats = invoke("--url", db_url, "stats")
    assert "paused: default" in stats.stdout and "default paused" in stats.stdout, stats.output
    (info,) = eventually(lambda: _workers_json(db_url), "the worker's record")
    assert (info["pid"], info["concurrency"], info["queues"]) == (worker.pid, 3, ["default"])
    table = invoke("--url", db_url, "workers")
    assert str(worker.pid) in table.stdout and "live" in table.stdout, table.output
    time.sleep(1.5)  # more than a pause check interval: it would have run by now
    assert producer.get_job_sync(job.id).state is JobState.QUEUED

    resumed = invoke("--url", db_url, "resume", "default")
    assert resumed.stdout.strip() == "queue default resumed", resumed.output
    assert producer.wait_sync(job.id, timeout=20).state is JobState.COMPLETED
    assert "queue default resumed; claiming from it again" in worker.output()
    assert worker.output().count("queue default paused") == 1
    assert "paused" not in invoke("--url", db_url, "stats").stdout
    assert invoke("--url", db_url, "resume", "default").stdout.strip() == (
        "queue default was not paused"
    )

    # A job running now shows in the worker's record (renewed every 5 s).
    slow = producer.enqueue_sync("sleepy", {"seconds": 60})

    def running() -> list[dict]:
        (info,) = _workers_json(db_url)
        return list(info["running"])

    (listed,) = eventually(running, "the running job in the record", timeout=20)
    assert (listed["id"], listed["name"]) == (slow.id, "sleepy")
    assert "sleepy" in invoke("--url", db_url, "workers").stdout
    assert producer.cancel_sync(slow.id)
    assert producer.wait_sync(slow.id, timeout=20).state is JobState.CANCELLED


def test_workers_all_shows_a_silent_worker_as_stale(db_url: str) -> None:
    async def beat() -> None:
        async with Conveyor(db_url) as app:
            backend = app.backend
            assert isinstance(backend, WorkerRegistry)
            then = time.time() - 60
            job = RunningJobInfo("job-7", "report.build", then - 5)
            silent = WorkerInfo("w-gone", "box", 7, ("default",), ("x",), then, then, 2, (job,))
            await backend.worker_beat(silent, 20.0, then)

    asyncio.run(beat())
    assert _workers_json(db_url) == []
    assert "no worker" in invoke("--url", db_url, "workers").stdout
    (stale,) = _workers_json(db_url, "--all")
    assert (stale["id"], stale["stale"], stale["concurrency"]) == ("w-gone", True, 2)
    table = invoke("--url", db_url, "workers", "--all").stdout
    assert "w-gone" in table and "stale" in table and "report.build" in table
    assert "1m ago" in table
