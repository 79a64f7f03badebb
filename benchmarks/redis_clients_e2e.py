"""conveyor's Redis backend end to end on its RESP client and on redis-py.

    python benchmarks/redis_clients_e2e.py --jobs 20000 --rounds 2

The same backend code runs on either client: for redis-py, the driver and
worker processes swap in benchmarks/redis_transport_redispy.py (redis.asyncio
with its hiredis parser) for conveyor/backends/redis/resp.py's RespClient.
Each measurement runs in a fresh driver process with its own worker process,
the clients taking turns (resp, redis-py, redis-py, resp, ...) so a noisy
neighbour hurts both alike; the best round of each client counts.

Measured, per client:

  enqueue/s  `await app.enqueue(...)` one at a time (--single jobs)
  drain/s    --jobs no-op jobs already queued (enqueue_many of 1,000), ONE
             worker process at concurrency 10: jobs / (the moment the last
             job's body ran - the moment the worker started), both taken in
             the worker process
  p50 ms     enqueue-to-start on the then idle worker: --latency jobs, one
             every 20 ms, each carrying the producer's clock just before its
             enqueue call; its body takes the difference

The command-level comparison is benchmarks/redis_clients.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis

from conveyor import Conveyor
from conveyor.logs import LOGGER, PLAIN_FORMAT

CLIENTS = ("resp", "redis-py")
NOOP = "e2e.noop"
STAMP = "e2e.stamp"


def use_client(client: str) -> None:
    if client == "redis-py":
        import redis_transport_redispy

        redis_transport_redispy.install()


class Probe:
    """What the worker's job bodies report to the driver (through `report`)."""

    def __init__(self, report: Any = None, drain: int = 0, latency: int = 0) -> None:
        self.report, self.drain, self.latency = report, drain, latency
        self.done = 0
        self.started_at = 0.0
        self.delays: list[float] = []

    def ran_noop(self) -> None:
        self.done += 1
        if self.done == self.drain:
            self.report.put(("drain", time.monotonic() - self.started_at))

    def ran_stamp(self, sent: float) -> None:
        self.delays.append(time.time() - sent)
        if len(self.delays) == self.latency:
            self.report.put(("latency", self.delays))


def make_app(url: str, probe: Probe) -> Conveyor:
    app = Conveyor(url)

    @app.job(NOOP)  # default options, as benchmarks/run.py's conveyor peer
    async def noop(payload: Any) -> None:
        probe.ran_noop()

    @app.job(STAMP)
    async def stamp(sent: float) -> None:
        probe.ran_stamp(sent)

    return app


def quiet_worker_logs(level: str) -> None:
    """The worker's log lines (one or two per job at INFO) go to os.devnull,
    formatted as usual: their cost stays in the figures, their text leaves
    the terminal. `--worker-logs warning` leaves the per-job lines out."""
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    ours = logging.getLogger(LOGGER)
    ours.addHandler(handler)
    ours.setLevel(level.upper())


def worker_process(
    client: str, url: str, report: Any, stop: Any, drain: int, latency: int, logs: str
) -> None:
    use_client(client)
    quiet_worker_logs(logs)

    async def main() -> None:
        probe = Probe(report, drain, latency)
        app = make_app(url, probe)
        await app.open()
        worker = app.worker(concurrency=10, scheduler=False)
        probe.started_at = time.monotonic()
        async with worker:
            while not stop.is_set():  # noqa: ASYNC110 - a process-shared flag
                await asyncio.sleep(0.05)
        await app.close()

    asyncio.run(main())


async def _drive(client: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    app = make_app(url, Probe())
    await app.open()
    figures: dict[str, float] = {}
    ctx = multiprocessing.get_context("spawn")
    report, stop = ctx.Queue(), ctx.Event()
    worker = None
    try:
        started = time.perf_counter()
        for _ in range(args.single):
            await app.enqueue(NOOP)
        figures["enqueue"] = args.single / (time.perf_counter() - started)
        await app.purge(["queued"])
        for done in range(0, args.jobs, 1000):
            await app.enqueue_many([(NOOP, None)] * min(1000, args.jobs - done))
        worker = ctx.Process(
            target=worker_process,
            args=(client, url, report, stop, args.jobs, args.latency, args.worker_logs),
            daemon=True,
        )
        worker.start()
        kind, seconds = await asyncio.to_thread(report.get, True, 120)
        assert kind == "drain"
        figures["drain"] = args.jobs / seconds
        await asyncio.sleep(1.0)  # let the worker go idle
        base = time.monotonic()
        for i in range(args.latency):
            await asyncio.sleep(max(0.0, base + i * 0.02 - time.monotonic()))
            await app.enqueue(STAMP, time.time())
        kind, delays = await asyncio.to_thread(report.get, True, 60)
        assert kind == "latency"
        figures["p50_ms"] = statistics.median(delays) * 1000
    finally:
        stop.set()
        if worker is not None:
            await asyncio.to_thread(worker.join, 30)
        await app.close()
    return figures


def driver_process(client: str, url: str, args: argparse.Namespace, out: Any) -> None:
    use_client(client)
    out.put(asyncio.run(_drive(client, url, args)))


def measure(client: str, args: argparse.Namespace) -> dict[str, float]:
    """One round for one client, in a fresh driver process on its own key prefix."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    prefix = f"e2e-{os.getpid()}-{client}"
    driver = ctx.Process(
        target=driver_process, args=(client, f"{args.url}?prefix={prefix}", args, out)
    )
    driver.start()
    try:
        figures: dict[str, float] = out.get(timeout=300)
    finally:
        driver.join(30)
        with redis.Redis.from_url(args.url) as server:
            for key in server.scan_iter(match=f"{{{prefix}}}:*", count=1000):
                server.unlink(key)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="loopback server")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs drained")
    parser.add_argument("--single", type=int, default=5_000, help="jobs enqueued one at a time")
    parser.add_argument("--latency", type=int, default=200, help="latency samples")
    parser.add_argument(
        "--worker-logs",
        choices=("info", "warning"),
        default="info",
        help="the worker's log level (its lines go to os.devnull); info is the default's",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per client; best counts")
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {}
    for round_ in range(args.rounds):
        order = CLIENTS if round_ % 2 == 0 else CLIENTS[::-1]
        for client in order:
            figures = measure(client, args)
            print(
                f"round {round_ + 1} {client:<8} enqueue/s {figures['enqueue']:>8,.0f}  "
                f"drain/s {figures['drain']:>8,.0f}  p50 {figures['p50_ms']:.2f} ms",
                flush=True,
            )
            kept = best.setdefault(client, figures)
            kept["enqueue"] = max(kept["enqueue"], figures["enqueue"])
            kept["drain"] = max(kept["drain"], figures["drain"])
            kept["p50_ms"] = min(kept["p50_ms"], figures["p50_ms"])
    resp, redispy = best["resp"], best["redis-py"]
    print()
    title = f"best of {args.rounds}"
    print(f"{title:<18} {'resp.py':>10} {'redis-py':>10} {'resp÷redis-py':>14}")
    for key, label in (("enqueue", "enqueue/s (one)"), ("drain", "drain/s")):
        mine, theirs = resp[key], redispy[key]
        print(f"{label:<18} {mine:>10,.0f} {theirs:>10,.0f} {mine / theirs:>13.2f}x")
    p50, other = resp["p50_ms"], redispy["p50_ms"]
    print(f"{'p50 start ms':<18} {p50:>10.2f} {other:>10.2f} {other / p50:>13.2f}x (lower wins)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("reproduce:", shlex.join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
