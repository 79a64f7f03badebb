"""Drain N no-op jobs with one conveyor worker in this process, and say where
the time went: jobs/s, this process's CPU per job and, on a Redis server
(redis://, bullmq://), the server's CPU per job and its busiest commands.

    python benchmarks/drain.py bullmq://127.0.0.1:6379/9?queue=bench --jobs 20000
    python benchmarks/drain.py redis://127.0.0.1:6379/9 --jobs 20000 --prefetch 40

A probe for profiling (py-spy attaches to it well), not a comparison with
peers: run.py does that, with the worker in a process of its own. Worker log
lines are off unless --log-file is given (they cost about 10 µs each). The
URL's Redis DB is emptied first (FLUSHDB): give it one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from conveyor import Conveyor
from conveyor.backends.redis.resp import RespClient
from conveyor.backends.redis.url import RedisURL
from conveyor.logs import LineHandler, formatter

NOOP = "bench.noop"


def redis_url(url: str) -> str | None:
    """The Redis server behind a redis:// or bullmq:// URL (None: another backend)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "bullmq"):
        return None
    return f"redis://{parts.netloc}{parts.path or '/0'}"


class RedisStats:
    def __init__(self, url: str) -> None:
        self.client = RespClient(RedisURL(url))

    async def cpu(self) -> float:
        info = await self.client.call("INFO", "cpu")
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])

    async def commands(self) -> dict[str, tuple[int, float]]:
        info = await self.client.call("INFO", "commandstats")
        found = {}
        for line in info.splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line.split(":", 1)
                fields = dict(item.split("=") for item in rest.split(","))
                found[name.removeprefix("cmdstat_")] = (int(fields["calls"]), float(fields["usec"]))
        return found


async def main(args: argparse.Namespace) -> None:
    server = redis_url(args.url)
    stats = RedisStats(server) if server else None
    if stats is not None:
        await stats.client.call("FLUSHDB")
    keep = None if args.keep == "all" else int(args.keep)
    app = Conveyor(args.url, keep_completed=keep)

    @app.job(NOOP)
    async def noop(payload: Any) -> None:
        return None

    async with app:
        for start in range(0, args.jobs, 1000):
            await app.enqueue_many([(NOOP, {}) for _ in range(min(1000, args.jobs - start))])
        if stats is not None:
            await stats.client.call("CONFIG", "RESETSTAT")
            server_before = await stats.cpu()
        own_before, began = time.process_time(), time.perf_counter()
        worker = app.worker(concurrency=args.concurrency, prefetch=args.prefetch, scheduler=False)
        async with worker:
            while worker.stats()["finished"] < args.jobs:
                await asyncio.sleep(0.01)
            wall = time.perf_counter() - began
            own = time.process_time() - own_before
        per_job = 1e6 / args.jobs
        line = f"drain {args.jobs / wall:,.0f} jobs/s ({wall:.2f} s); "
        line += f"this process {own * per_job:.0f} µs/job"
        if stats is not None:
            server = await stats.cpu() - server_before
            line += f"; Redis {server * per_job:.0f} µs/job"
        print(line)
        if stats is not None:
            busiest = sorted((await stats.commands()).items(), key=lambda kv: -kv[1][1])[:6]
            for name, (calls, usec) in busiest:
                print(
                    f"  {name:10} {calls:7} calls {usec / calls:7.1f} µs/call {usec / args.jobs:6.1f} µs/job"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--keep", default="1000", help="completed jobs kept: a number or 'all'")
    parser.add_argument("--log-file", help="write the worker's log lines here (default: none)")
    parsed = parser.parse_args()
    if parsed.log_file:
        # Line-buffered, with the worker's own text format: as its lines
        # reach a file through stderr.
        handler = LineHandler(open(parsed.log_file, "w", buffering=1))  # noqa: SIM115
        handler.setFormatter(formatter("text"))
        logging.getLogger("conveyor").addHandler(handler)
        logging.getLogger("conveyor").setLevel(logging.INFO)
    else:
        logging.disable(logging.INFO)
    asyncio.run(main(parsed))
