"""Worker presence (issue 11, point 1): a worker's record says where it runs
(host, pid), what it serves (queues, concurrency), the jobs it runs now (id,
name, start) and when it last beat; a record whose beats stopped is shown as
stale for STALE_WORKER_KEPT seconds (`include_stale=True`), then forgotten."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from conveyor import Conveyor, Worker
from conveyor.backends.stores import STALE_WORKER_KEPT, RunningJobInfo, WorkerInfo, WorkerRegistry

from .conftest import MakeApp, needs
from .helpers import eventually, wait_state
from .test_rolling_deploy import same_store

pytestmark = needs("lookup")


async def test_a_worker_record_shows_its_concurrency_and_the_jobs_it_runs(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    from conveyor import JobState

    app = await make_app()
    viewer = await same_store(make_app, app, backend_name)
    release = asyncio.Event()

    @app.job("slow", retries=0)
    async def slow(payload: Any) -> None:
        await release.wait()

    async with worker(app, concurrency=3, presence_interval=0.05) as running:
        job = await app.enqueue("slow", 1)
        started = await wait_state(app, job.id, JobState.RUNNING)

        async def busy() -> WorkerInfo | None:
            for info in await viewer.workers():
                if info.id == running.id and info.running:
                    return info
            return None

        info = await eventually(busy, message="the worker's record to list its job")
        assert (info.host, info.pid, info.concurrency) == (socket.gethostname(), os.getpid(), 3)
        assert info.queues == ("default",) and not info.stale
        assert started.started_at is not None
        assert info.running == (RunningJobInfo(job.id, "slow", started.started_at.timestamp()),)
        assert abs(info.last_seen - time.time()) < 5
        release.set()

        async def idle() -> bool:
            infos = {i.id: i for i in await asyncio.to_thread(viewer.workers_sync)}
            return running.id in infos and infos[running.id].running == ()

        await eventually(idle, message="the record to show no job once it is done")


async def test_a_silent_worker_is_stale_for_a_while_then_forgotten(app: Conveyor) -> None:
    backend = app.backend
    assert isinstance(backend, WorkerRegistry)
    t0 = time.time()
    running = (RunningJobInfo("job-1", "slow", t0 - 3),)
    info = WorkerInfo("w-1", "box", 42, ("default",), ("slow",), t0, t0, 4, running)
    await backend.worker_beat(info, 10.0, t0)
    (live,) = await backend.workers(t0 + 9, include_stale=True)
    assert live == info and not live.stale
    assert await backend.workers(t0 + 11) == []  # not live
    (stale,) = await backend.workers(t0 + 11, include_stale=True)
    assert stale.stale and (stale.id, stale.concurrency, stale.running) == ("w-1", 4, running)
    later = t0 + 10 + STALE_WORKER_KEPT - 1
    assert [w.id for w in await backend.workers(later, include_stale=True)] == ["w-1"]
    gone = t0 + 10 + STALE_WORKER_KEPT + 1
    assert await backend.workers(gone, include_stale=True) == []
    # Another worker's beat forgets the record for good: even read at a time
    # it was stale at, it is gone.
    other = WorkerInfo("w-2", "box", 43, ("default",), ("slow",), gone, gone)
    await backend.worker_beat(other, 10.0, gone)
    assert [w.id for w in await backend.workers(t0 + 11, include_stale=True)] == ["w-2"]
    # A stale worker that beats again is live again.
    await backend.worker_beat(info, 10.0, gone)
    assert {w.id: w.stale for w in await backend.workers(gone + 1)} == {"w-1": False, "w-2": False}
