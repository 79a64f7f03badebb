"""`conveyor bench`: throughput and latency per backend, printed with the
command line that reproduces them.

Figures:
* enqueue/s one at a time (`await app.enqueue(...)` in a loop);
* enqueue/s batched (`enqueue_many` of 1,000);
* drain/s: no-op jobs already queued, one worker at the given concurrency,
  counted in process (the probe costs nothing per job), with the worker's
  INFO line per job off (it would bury the table; it costs a worker about
  15 µs per job);
* p50 / p99 enqueue-to-start latency on an idle worker: one job every 20 ms,
  measured from the job's `created_at` (taken before the enqueue call) to the
  moment its handler starts running in the worker. For backends that
  other processes can reach (everything but memory) the worker runs in a
  separate process, so the figure includes the cross-process wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.settings import CONVEYOR_BENCH_REDIS_URL, env_str

NOOP = "bench.noop"
STAMP = "bench.stamp"  # returns the moment its handler started


def make_app(url: str) -> Conveyor:
    app = Conveyor(url, keep_completed=1000)

    @app.job(NOOP, retries=0, timeout=None)
    async def noop(payload: Any) -> None:
        return None

    @app.job(STAMP, retries=0, timeout=None)
    async def stamp(payload: Any) -> float:
        return time.time()

    return app


@dataclass
class Figures:
    backend: str
    enqueue_single: float
    enqueue_batched: float
    drain: float
    p50_ms: float
    p99_ms: float


def _url_for(name: str, workdir: str) -> str:
    if name == "memory":
        return "memory://"
    if name == "sqlite":
        return f"sqlite:///{os.path.join(workdir, f'bench-{os.getpid()}.db')}"
    if name == "redis":
        base = env_str(CONVEYOR_BENCH_REDIS_URL) or "redis://127.0.0.1:6379/0"
        return f"{base}?prefix=bench-{os.getpid()}"
    return name  # a full URL


async def _enqueue_single(app: Conveyor, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await app.enqueue(NOOP)
    return count / (time.perf_counter() - start)


async def _enqueue_batched(app: Conveyor, count: int, batch: int = 1000) -> float:
    items: list[tuple[str, Any]] = [(NOOP, None)] * batch
    start = time.perf_counter()
    done = 0
    while done < count:
        size = min(batch, count - done)
        await app.enqueue_many(items[:size])
        done += size
    return count / (time.perf_counter() - start)


async def _drain(app: Conveyor, count: int, concurrency: int) -> float:
    await app.purge(["completed", "queued"])
    await _enqueue_batched(app, count)
    worker = app.worker(concurrency=concurrency, queues=["default"], scheduler=False)
    start = time.perf_counter()
    async with worker:
        while worker.processed < count:  # noqa: ASYNC110 - a counter is the cheapest probe
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
    return count / elapsed


@contextlib.contextmanager
def _without_job_lines() -> Iterator[None]:
    """The workers' INFO line per job off (warnings and errors stay): they
    drain thousands of jobs, and the lines would bury the table."""
    worker_logger = logging.getLogger("conveyor.worker")
    before = worker_logger.level
    worker_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        worker_logger.setLevel(before)


def _worker_process(url: str, ready: Any, stop: Any) -> None:
    logging.getLogger("conveyor.worker").setLevel(logging.WARNING)  # as _without_job_lines

    async def main() -> None:
        app = make_app(url)
        worker = app.worker(concurrency=10, queues=["default"], scheduler=False)
        async with worker:
            ready.set()
            while not stop.is_set():  # noqa: ASYNC110 - a process-shared flag
                await asyncio.sleep(0.05)
        await app.close()

    asyncio.run(main())


async def _latency(app: Conveyor, samples: int, separate_process: bool) -> tuple[float, float]:
    await app.purge(["completed", "queued"])
    ctx = multiprocessing.get_context("spawn")
    process = None
    if separate_process:
        ready, stop = ctx.Event(), ctx.Event()
        process = ctx.Process(target=_worker_process, args=(app.url, ready, stop), daemon=True)
        process.start()
        await asyncio.to_thread(ready.wait, 30)
        worker_cm = None
    else:
        worker_cm = app.worker(concurrency=10, queues=["default"], scheduler=False)
        await worker_cm.start()
    try:
        await asyncio.sleep(0.3)  # let the worker settle into its idle wait
        ids = []
        for _ in range(samples):
            job = await app.enqueue(STAMP)
            ids.append(job.id)
            await asyncio.sleep(0.02)
        delays = []
        for job_id in ids:
            done = await app.wait(job_id, timeout=30)
            assert done.created_at is not None
            delays.append((done.result - done.created_at.timestamp()) * 1000)
    finally:
        if process is not None:
            stop.set()
            await asyncio.to_thread(process.join, 30)
        if worker_cm is not None:
            await worker_cm.stop()
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    return statistics.median(delays), p99


async def bench_backend(name: str, jobs: int, concurrency: int, workdir: str) -> Figures:
    url = _url_for(name, workdir)
    app = make_app(url)
    await app.open()
    try:
        single = await _enqueue_single(app, min(jobs, 5000))
        batched = await _enqueue_batched(app, jobs)
        drain = await _drain(app, jobs, concurrency)
        p50, p99 = await _latency(app, 200, separate_process=name != "memory")
    finally:
        await app.close()
    return Figures(name, single, batched, drain, p50, p99)


def run_bench(backends: list[str], jobs: int, concurrency: int) -> None:
    console = Console()
    command = (
        f"conveyor bench --backends {','.join(backends)} --jobs {jobs} --concurrency {concurrency}"
    )
    table = Table(title=f"conveyor bench ({jobs} no-op jobs, concurrency {concurrency})")
    for column in (
        "backend",
        "enqueue/s (single)",
        "enqueue/s (batched)",
        "drain/s",
        "p50 start ms",
        "p99 start ms",
    ):
        table.add_column(column, justify="right" if column != "backend" else "left")
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as workdir, _without_job_lines():
        for name in backends:
            console.print(f"[dim]benchmarking {name} ...[/]")
            figures = asyncio.run(bench_backend(name, jobs, concurrency, workdir))
            table.add_row(
                figures.backend,
                f"{figures.enqueue_single:,.0f}",
                f"{figures.enqueue_batched:,.0f}",
                f"{figures.drain:,.0f}",
                f"{figures.p50_ms:.2f}",
                f"{figures.p99_ms:.2f}",
            )
    console.print(table)
    console.print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; reproduce: {command}")
