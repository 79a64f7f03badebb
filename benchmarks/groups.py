"""How long a worker takes to run jobs spread over FIFO groups (SQS FIFO
queues, ordered Pub/Sub), and whether any group's jobs overlapped or ran out
of order.

    python benchmarks/groups.py URL [--jobs 200] [--groups 1] [--concurrency 10] [--work 0]

URL is a FIFO backend's (`sqs://name.fifo?...&create=true[&store=...]`,
`pubsub://p/t?ordered=true&create=true[&store=...]`); a fresh queue name
each run. Jobs are enqueued round-robin over the groups first, then one
in-process worker runs them all; the time is from the worker's start to the
last job's end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from conveyor import Conveyor


async def measure(url: str, jobs: int, groups: int, concurrency: int, work: float) -> None:
    app = Conveyor(url)
    ran: dict[int, list[int]] = {g: [] for g in range(groups)}
    running: dict[int, int] = dict.fromkeys(range(groups), 0)
    overlaps = 0
    done = asyncio.Event()
    finished = 0

    @app.job("step", retries=0)
    async def step(payload: dict[str, Any]) -> None:
        nonlocal overlaps, finished
        group = payload["g"]
        running[group] += 1
        overlaps += running[group] > 1
        if work:
            await asyncio.sleep(work)
        ran[group].append(payload["n"])
        running[group] -= 1
        finished += 1
        if finished >= jobs:
            done.set()

    async with app:
        batch = [
            ("step", {"g": n % groups, "n": n}, {"group": f"g{n % groups}"}) for n in range(jobs)
        ]
        for start in range(0, jobs, 100):
            await app.enqueue_many(batch[start : start + 100])
        began = time.perf_counter()
        async with app.worker(concurrency=concurrency, poll_interval=1.0):
            await asyncio.wait_for(done.wait(), timeout=600)
            took = time.perf_counter() - began
    out_of_order = sum(ran[g] != sorted(ran[g]) for g in ran)
    print(
        f"{jobs} jobs, {groups} group(s), concurrency {concurrency}, work {work * 1000:.0f} ms: "
        f"{took:.2f} s, {jobs / took:.0f} jobs/s; overlaps {overlaps}, "
        f"groups out of order {out_of_order}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--work", type=float, default=0.0, help="seconds each job sleeps")
    args = parser.parse_args()
    asyncio.run(measure(args.url, args.jobs, args.groups, args.concurrency, args.work))


if __name__ == "__main__":
    main()
