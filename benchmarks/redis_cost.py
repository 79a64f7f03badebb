"""What Redis itself does per drained job: conveyor's worker on bullmq://
against BullMQ's Node worker, counted in instructions, not seconds.

    python benchmarks/redis_cost.py --jobs 3000

A redis-server of its own (on --port) runs under valgrind's callgrind; the
jobs are added, the counters zeroed, then drained (conveyor: one claim by
name and one completion call per --batch jobs, in turn, as a worker's
exchange does; BullMQ: its own Worker at concurrency 10, whose calls are
its own). Instructions are the same from run to run, whatever the
machine's speed, where the time a drain takes moves by tens of percent:
the figure to compare changes to the scripts by. Needs valgrind, Node (with
`npm ci` run in benchmarks/node) and redis-server; each side takes about a
minute for 3,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conveyor import Conveyor
from conveyor.backends.base import Outcome, OutcomeKind, Retention
from conveyor.backends.bullmq import BullMQBackend

NOOP = "bench.noop"
HERE = Path(__file__).resolve().parent
ZERO = ["callgrind_control", "--zero"]


def wait_for(port: int) -> None:
    for _ in range(100):
        if (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise SystemExit(f"redis-server under callgrind did not answer on port {port}")


def counted(port: int, drain: Callable[[], None]) -> int:
    """Instructions the server ran from the zeroing (done by `drain`) to its
    shutdown."""
    out = tempfile.mkdtemp(prefix="redis-cost-")
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}/cg.%p",
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        drain()
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        server.wait()
    total = 0
    for path in glob.glob(f"{out}/cg.*"):
        found = re.findall(r"^(?:summary|totals): (\d+)", Path(path).read_text(), re.MULTILINE)
        total += int(found[-1]) if found else 0
    shutil.rmtree(out, ignore_errors=True)
    return total


async def conveyor_drain(url: str, jobs: int, batch: int, keep: int) -> None:
    app = Conveyor(url, keep_completed=keep)
    app.declare(NOOP)
    async with app:
        backend = app.backend
        assert isinstance(backend, BullMQBackend)
        for start in range(0, jobs, 1000):
            await app.enqueue_many([(NOOP, {}) for _ in range(min(1000, jobs - start))])
        # Blocking on purpose: the counters are zeroed before the drain starts.
        subprocess.run(ZERO, capture_output=True, check=True)  # noqa: ASYNC221
        retention, done = Retention(keep_completed=keep), 0
        while done < jobs:
            claimed = await backend.claim(["default"], batch, 30.0, names=[NOOP])
            outcomes = [
                Outcome(job.id, job.token or "", OutcomeKind.COMPLETED, time.time(), result="null")
                for job in claimed
            ]
            if not claimed or not all(await backend.finish(outcomes, retention)):
                raise SystemExit("the drain lost a job")
            done += len(claimed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=5, help="conveyor's jobs per exchange")
    parser.add_argument("--keep", type=int, default=1000, help="completed jobs kept")
    parser.add_argument("--port", type=int, default=6391)
    parser.add_argument("--only", choices=("conveyor", "bullmq"))
    args = parser.parse_args()
    missing = [
        t for t in ("valgrind", "callgrind_control", "redis-server", "node") if not shutil.which(t)
    ]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} on PATH")
    url = f"redis://127.0.0.1:{args.port}/9"
    figures: dict[str, float] = {}
    if args.only != "bullmq":
        ours = f"bullmq://127.0.0.1:{args.port}/9?queue=bench"

        def conveyor() -> None:
            asyncio.run(conveyor_drain(ours, args.jobs, args.batch, args.keep))

        figures["conveyor"] = counted(args.port, conveyor) / args.jobs
    if args.only != "conveyor":
        node = [
            "node",
            "drain_once.mjs",
            f"--url={url}",
            f"--jobs={args.jobs}",
            f"--keep={args.keep}",
        ]

        def bullmq() -> None:
            subprocess.run([*node, "--", *ZERO], check=True, cwd=HERE / "node")

        figures["bullmq"] = counted(args.port, bullmq) / args.jobs
    for name, per_job in figures.items():
        ratio = ""
        if name != "bullmq" and "bullmq" in figures:
            ratio = f" ({per_job / figures['bullmq']:.2f}x BullMQ's worker's)"
        print(f"{name:9} {per_job:10,.0f} Redis instructions per drained job{ratio}")
    print(f"reproduce: {sys.executable} {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
