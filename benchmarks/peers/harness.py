"""The per-peer processes that benchmarks/run.py starts.

    python -m peers.harness driver --peer arq ...   # producer side, one per peer
    python -m peers.harness worker --peer arq ...   # started by the driver

The driver runs the whole workload for one peer against its own store (a
Redis DB, or a PostgreSQL schema: see peers/stores.py) and writes what it
measured to WORKDIR/result.json after every phase, so that a run killed for
taking too long still reports what it finished:

1. empty the store (FLUSHDB, or drop and recreate the schema), then `--jobs`
   enqueues one at a time (a client loop);
2. if the peer has a batch call: empty the store, then `--jobs` enqueues in
   batches of `--batch-size`;
3. drain: with those jobs queued, start ONE worker process at
   `--concurrency`; drain/s = jobs / (time of the last job's body - the time
   the worker process handed control to the library's worker loop), both
   taken inside the worker process (see peers/probe.py);
4. latency: the now idle worker gets `--latency-jobs` jobs, one every
   `--interval` s, each carrying the producer's `time.time()` taken just
   before its enqueue call; the task records its start time minus that;
5. SIGTERM the worker, empty the store.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peers import probe as probe_module
from peers.base import Peer
from peers.stores import flush

RESULT = "result.json"


def load_peer(name: str) -> type[Peer]:
    module = importlib.import_module(f"peers.{name}_peer")
    peer: type[Peer] = module.PEER
    return peer


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir)
        self.deadline: float = time.monotonic() + args.budget
        self.result: dict[str, Any] = {
            "peer": args.peer,
            "language": "python",
            "status": "running",
            "phases": {},
        }
        self.worker: subprocess.Popen[bytes] | None = None

    def save(self) -> None:
        probe_module.write_json(self.workdir / RESULT, self.result)

    def phase(self, name: str, data: dict[str, Any]) -> None:
        self.result["phases"][name] = data
        self.save()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def run(self) -> None:
        args = self.args
        try:
            cls = load_peer(args.peer).for_url(args.url)
        except ImportError as exc:
            self.result["status"] = f"n/a (not installed: {exc.name or exc})"
            self.save()
            return
        self.result.update(
            versions=cls.versions_for(args.url),
            settings=cls.settings,
            batch_call=cls.batch_call,
            no_batch_reason=cls.no_batch_reason,
            notes=cls.notes,
        )
        missing = cls.missing(args.url)
        if missing is not None:
            self.result["status"] = missing
            self.save()
            return
        self.save()
        peer = cls(args.url, args.concurrency)
        peer.store_url = args.store_url
        await self.fresh(peer, first=True)
        try:
            queued = await self.enqueue_phase(
                peer, "enqueue_single", batched=False, until=self.at_fraction(0.3)
            )
            if cls.batch_call is not None:
                await self.fresh(peer)
                queued = await self.enqueue_phase(
                    peer, "enqueue_batched", batched=True, until=self.at_fraction(0.45)
                )
            if queued == 0:
                self.phase("drain", {"skipped": "nothing was enqueued"})
            elif await self.drain_phase(queued):
                await self.latency_phase(peer)
            else:
                self.phase("latency", {"skipped": "the drain did not finish"})
            self.result["status"] = "ok"
        finally:
            self.stop_worker()
            await peer.reset()
            await peer.close()
            flush(args.store_url)
            self.save()

    def at_fraction(self, fraction: float) -> float:
        return time.monotonic() + max(5.0, self.left() * fraction)

    async def fresh(self, peer: Peer, first: bool = False) -> None:
        if not first:
            await peer.reset()
            await peer.close()
        flush(self.args.store_url)
        await peer.open()
        if first:
            await peer.reset()

    async def enqueue_phase(self, peer: Peer, name: str, batched: bool, until: float) -> int:
        jobs, size = self.args.jobs, self.args.batch_size
        done = 0
        start = time.perf_counter()
        timed_out = False
        if batched:
            zeros = [0.0] * size
            while done < jobs:
                count = min(size, jobs - done)
                await peer.enqueue_batch(zeros[:count])
                done += count
                if time.monotonic() > until and done < jobs:
                    timed_out = True
                    break
        else:
            enqueue = peer.enqueue_one
            while done < jobs:
                await enqueue(0.0)
                done += 1
                if done % 100 == 0 and time.monotonic() > until and done < jobs:
                    timed_out = True
                    break
        seconds = time.perf_counter() - start
        data: dict[str, Any] = {"count": done, "seconds": seconds, "rate": done / seconds}
        if batched:
            data["batch_size"] = size
        if timed_out:
            data["timeout"] = True
        self.phase(name, data)
        return done

    def start_worker(self, drain_target: int) -> None:
        args = self.args
        command = [
            sys.executable,
            "-m",
            "peers.harness",
            "worker",
            f"--peer={args.peer}",
            f"--url={args.url}",
            f"--workdir={args.workdir}",
            f"--drain={drain_target}",
            f"--latency={args.latency_jobs}",
            f"--concurrency={args.concurrency}",
        ]
        log = open(self.workdir / "worker.log", "wb")  # noqa: SIM115 - the child owns it
        self.worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def worker_failed(self) -> str | None:
        assert self.worker is not None
        code = self.worker.poll()
        if code is None:
            return None
        tail = (self.workdir / "worker.log").read_text(errors="replace").strip().splitlines()
        return f"worker exited with {code}: " + " | ".join(tail[-3:])

    def stop_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            return
        self.worker.send_signal(signal.SIGTERM)
        try:
            self.worker.wait(10)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()

    async def drain_phase(self, queued: int) -> bool:
        spawned = time.time()
        self.start_worker(queued)
        until = self.deadline - self.args.latency_reserve
        files = self.workdir
        while True:
            done = probe_module.read_json(files / probe_module.DRAIN)
            if done is not None:
                break
            failure = self.worker_failed()
            if failure is not None:
                self.phase("drain", {"error": failure})
                return False
            if time.monotonic() > until:
                progress = probe_module.read_json(files / probe_module.PROGRESS) or {}
                started = probe_module.read_json(files / probe_module.STARTED)
                since = started["time"] if started else spawned
                self.phase(
                    "drain",
                    {
                        "timeout": True,
                        "seconds": time.time() - since,
                        "done": progress.get("done", 0),
                        "count": queued,
                    },
                )
                return False
            await asyncio.sleep(0.1)
        started = probe_module.read_json(files / probe_module.STARTED)
        seconds = done["last"] - started["time"]
        self.phase(
            "drain",
            {
                "count": queued,
                "seconds": seconds,
                "rate": queued / seconds,
                "startup_s": done["first_start"] - started["time"],
                "spawn_to_start_s": started["time"] - spawned,
            },
        )
        return True

    async def latency_phase(self, peer: Peer) -> None:
        count, interval = self.args.latency_jobs, self.args.interval
        await asyncio.sleep(1.0)  # let the worker go idle
        base = time.monotonic()
        for i in range(count):
            pause = base + i * interval - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            await peer.enqueue_one(time.time())
        sent = time.monotonic()
        path = self.workdir / probe_module.LATENCY
        until = min(sent + 15.0, self.deadline - 1.0)
        while (samples := probe_module.read_json(path)) is None:
            failure = self.worker_failed()
            if failure is not None:
                self.phase("latency", {"error": failure})
                return
            if time.monotonic() > until:
                progress = probe_module.read_json(self.workdir / probe_module.PROGRESS) or {}
                self.phase(
                    "latency",
                    {
                        "timeout": True,
                        "seconds": time.monotonic() - sent,
                        "done": progress.get("latency", 0),
                        "count": count,
                    },
                )
                return
            await asyncio.sleep(0.1)
        ms = sorted(1000.0 * s for s in samples)
        self.phase(
            "latency",
            {
                "n": len(ms),
                "p50_ms": percentile(ms, 0.50),
                "p99_ms": percentile(ms, 0.99),
                "min_ms": ms[0],
                "max_ms": ms[-1],
                "mean_ms": sum(ms) / len(ms),
            },
        )


def run_worker(args: argparse.Namespace) -> None:
    probe = probe_module.install(probe_module.Probe(Path(args.workdir), args.drain, args.latency))
    peer = load_peer(args.peer).for_url(args.url)(args.url, args.concurrency)
    peer.run_worker(probe.worker_started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m peers.harness")
    sub = parser.add_subparsers(dest="mode", required=True)
    driver = sub.add_parser("driver")
    driver.add_argument("--peer", required=True)
    driver.add_argument("--url", required=True, help="the peer's URL")
    driver.add_argument(
        "--store-url", required=True, help="the Redis DB or PostgreSQL schema to empty"
    )
    driver.add_argument("--workdir", required=True)
    driver.add_argument("--jobs", type=int, required=True)
    driver.add_argument("--batch-size", type=int, required=True)
    driver.add_argument("--concurrency", type=int, required=True)
    driver.add_argument("--latency-jobs", type=int, required=True)
    driver.add_argument("--interval", type=float, required=True)
    driver.add_argument("--budget", type=float, required=True)
    driver.add_argument("--latency-reserve", type=float, required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--peer", required=True)
    worker.add_argument("--url", required=True)
    worker.add_argument("--workdir", required=True)
    worker.add_argument("--drain", type=int, required=True)
    worker.add_argument("--latency", type=int, required=True)
    worker.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "driver":
        driver_ = Driver(args)
        try:
            asyncio.run(driver_.run())
        except BaseException as exc:
            driver_.result["status"] = f"error: {type(exc).__name__}: {exc}"
            driver_.save()
            raise
    else:
        run_worker(args)


if __name__ == "__main__":
    main()
