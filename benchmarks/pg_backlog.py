"""conveyor on PostgreSQL: does the drain rate hold up with a deep queue, and after
a million jobs have gone through the table?

    python benchmarks/pg_backlog.py                 # 10,000 and 1,000,000 queued rows
    python benchmarks/pg_backlog.py --rows 50000    # a quick check

Three drains, each by ONE real worker process at `--concurrency` (a fresh
process per drain, started once the jobs are queued, as benchmarks/run.py
does), all in one schema of its own (`bench_backlog_<random>`, created here and
dropped at the end):

1. small backlog: `--small` (10,000) jobs queued in an empty table, drained;
2. deep backlog: the schema emptied, `--rows` (1,000,000) jobs queued, drained
   to the end; the worker stamps the time every `--window` (10,000) jobs, so
   the report has the rate of the first window (the drain rate with `--rows`
   queued), of the last window (after `--rows` - `--window` jobs went through
   the table), over the whole drain, and in ten consecutive slices of it;
3. after the deep drain: `--small` jobs queued again in the same table (dead
   rows of the million and all) and drained; compare with 1.

The jobs are the no-op job of benchmarks/run.py (`bench.noop`, default job
options, keep_completed=1000), enqueued with `app.enqueue_many` in batches of
`--batch-size` (that rate is reported too). A drain's rate is counted in the
worker process, from the moment it hands control to the worker loop to the
body of the job that completes the window. With autovacuum off, as on this
machine, nothing cleans the table between or during the drains: the dead-row
counts at the end of each drain are reported next to the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import math
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from peers.probe import read_json, write_json  # noqa: E402
from peers.stores import (  # noqa: E402
    create_schema,
    drop_schema,
    recreate_schema,
    split_postgres,
    with_schema,
)

NOOP = "bench.noop"
STARTED, MARKS, PROGRESS = "started.json", "marks.json", "progress.json"


# ------------------------------------------------------------------------------ worker


class WindowProbe:
    """Counts drain jobs in the worker process and stamps the time every `window`
    jobs; the stamps file is rewritten at each stamp (a few hundred times a run)."""

    def __init__(self, workdir: Path, expected: int, window: int) -> None:
        self.workdir = workdir
        self.expected = expected
        self.window = window
        self._counter = itertools.count(1)  # next() is atomic under the GIL
        self.first_start: float | None = None
        self.marks: list[tuple[int, float]] = []

    def hit(self) -> None:
        now = time.time()
        n = next(self._counter)
        if n == 1:
            self.first_start = now
        if n % self.window == 0 or n == self.expected:
            self.marks.append((n, now))
            write_json(self.workdir / MARKS, {"first_start": self.first_start, "marks": self.marks})


def run_worker(args: argparse.Namespace) -> None:
    from conveyor import Conveyor

    workdir = Path(args.workdir)
    probe = WindowProbe(workdir, args.expect, args.window)

    pause = args.job_ms / 1000

    async def noop(payload: float) -> None:
        if pause:
            await asyncio.sleep(pause)  # a job that waits on I/O this long
        probe.hit()

    async def main() -> None:
        app = Conveyor(args.url)
        app.job(NOOP)(noop)  # default options, as benchmarks/peers/conveyor_peer.py
        await app.open()
        worker = app.worker(concurrency=args.concurrency, prefetch=args.prefetch, scheduler=False)
        write_json(workdir / STARTED, {"time": time.time(), "pid": os.getpid()})
        try:
            await worker.run()  # until SIGTERM
        finally:
            await app.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------ driver


async def fill(url: str, count: int, batch_size: int) -> float:
    """Queue `count` no-op jobs; return the enqueue rate (jobs/s)."""
    from conveyor import Conveyor

    async def noop(payload: float) -> None:
        return None

    app = Conveyor(url)
    app.job(NOOP)(noop)
    await app.open()
    try:
        items: list[tuple[str, Any]] = [(NOOP, 0.0)] * batch_size
        done = 0
        start = time.perf_counter()
        while done < count:
            size = min(batch_size, count - done)
            await app.enqueue_many(items[:size])
            done += size
        return count / (time.perf_counter() - start)
    finally:
        await app.close()


def drain(args: argparse.Namespace, url: str, expected: int, name: str) -> dict[str, Any]:
    """Start a worker process on `expected` queued jobs and wait until it has run them."""
    workdir = Path(tempfile.mkdtemp(prefix=f"conveyor-backlog-{name}-"))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "worker",
        f"--url={url}",
        f"--workdir={workdir}",
        f"--expect={expected}",
        f"--window={args.window}",
        f"--concurrency={args.concurrency}",
        f"--prefetch={args.prefetch}",
        f"--job-ms={args.job_ms}",
    ]
    log_path = workdir / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + args.timeout
    try:
        while True:
            state = read_json(workdir / MARKS) or {"marks": []}
            if state["marks"] and state["marks"][-1][0] >= expected:
                break
            if worker.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{name}: worker exited with {worker.returncode}: {tail}")
            if time.monotonic() > deadline:
                done = state["marks"][-1][0] if state["marks"] else 0
                raise RuntimeError(
                    f"{name}: not drained after {args.timeout:.0f} s ({done:,} of {expected:,} "
                    f"jobs by the last stamp); raise --timeout"
                )
            time.sleep(0.2)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    started = read_json(workdir / STARTED)
    log_path.unlink(missing_ok=True)
    for leftover in workdir.iterdir():
        leftover.unlink()
    workdir.rmdir()
    return {"started": started["time"], **state}


def rates(result: dict[str, Any]) -> dict[str, Any]:
    """Rates of the first window, the last window, the whole drain, and per slice."""
    marks: list[tuple[int, float]] = [(int(n), float(t)) for n, t in result["marks"]]
    t0 = result["started"]
    points = [(0, t0), *marks]
    total_n, total_t = marks[-1]
    first_n, first_t = marks[0]
    out: dict[str, Any] = {
        "jobs": total_n,
        "seconds": total_t - t0,
        "overall": total_n / (total_t - t0),
        "first": first_n / (first_t - t0),
        "startup_s": result["first_start"] - t0,
    }
    if len(points) >= 3:
        (n1, t1), (n2, t2) = points[-2], points[-1]
        out["last"] = (n2 - n1) / (t2 - t1)
        out["last_jobs"] = n2 - n1
    # Up to ten slices of (nearly) equal numbers of windows: the curve of the drain.
    slices = min(10, len(marks))
    ends = [marks[math.ceil(k * len(marks) / slices) - 1] for k in range(1, slices + 1)]
    out["slices"] = [
        (n2 - n1) / (t2 - t1) if t2 > t1 else None
        for (n1, t1), (n2, t2) in zip([(0, t0), *ends[:-1]], ends, strict=True)
    ]
    return out


def table_stats(url: str) -> dict[str, int]:
    """Live rows, dead rows and bytes of the schema's tables (the statistics the
    server keeps; they trail the last transactions by up to a second or so)."""
    import psycopg

    conninfo, schema = split_postgres(url)
    time.sleep(1.0)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(n_live_tup), 0), coalesce(sum(n_dead_tup), 0), "
            "coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_stat_user_tables "
            "WHERE schemaname = %s",
            (schema,),
        ).fetchone()
    assert row is not None
    return {"live": int(row[0]), "dead": int(row[1]), "bytes": int(row[2])}


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def report(args: argparse.Namespace, runs: dict[str, dict[str, Any]], facts: str) -> str:
    small, deep, after = runs["small"], runs["deep"], runs["after"]
    w = args.window
    lines = [
        "# conveyor on PostgreSQL: drain rate against queue depth and table history",
        "",
        f"- run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} · {facts}",
        f"- ONE worker process at concurrency {args.concurrency}, prefetch {args.prefetch}; "
        f"{f'jobs of {args.job_ms:g} ms' if args.job_ms else 'no-op jobs'}, default job options,"
        " keep_completed=1000; enqueue_many batches of "
        f"{args.batch_size:,}",
        "",
        "| drain | queued at start | enqueue/s (batched) | drain/s | dead rows after "
        "| table size after |",
        "|---|--:|--:|--:|--:|--:|",
        f"| {args.small:,} queued, empty table | {args.small:,} | {fmt(small['fill'])} "
        f"| {fmt(small['overall'])} | {small['stats']['dead']:,} "
        f"| {small['stats']['bytes'] / 1e6:,.1f} MB |",
        f"| {args.rows:,} queued: first {w:,} | {args.rows:,} | {fmt(deep['fill'])} "
        f"| {fmt(deep['first'])} | | |",
        f"| {args.rows:,} queued: last {deep.get('last_jobs', w):,} | | "
        f"| {fmt(deep.get('last'))} | | |",
        f"| {args.rows:,} queued: whole drain | | | {fmt(deep['overall'])} "
        f"| {deep['stats']['dead']:,} | {deep['stats']['bytes'] / 1e6:,.1f} MB |",
        f"| {args.small:,} queued after {args.rows:,} went through | {args.small:,} "
        f"| {fmt(after['fill'])} | {fmt(after['overall'])} | {after['stats']['dead']:,} "
        f"| {after['stats']['bytes'] / 1e6:,.1f} MB |",
        "",
        f"Deep drain, jobs/s in {len(deep['slices'])} consecutive slices of the "
        f"{args.rows:,} jobs: " + " · ".join(fmt(r) for r in deep["slices"]),
        "",
        f"Worker start → first job: {small['startup_s']:.3f} s / {deep['startup_s']:.3f} s / "
        f"{after['startup_s']:.3f} s. Reproduce:",
        "",
        "```",
        args.command,
        "```",
        "",
    ]
    return "\n".join(lines)


def check_backend(url: str) -> None:
    from conveyor.backends import from_url

    try:
        from_url(url)  # builds, does not connect: fails at once without the backend
    except Exception as exc:
        sys.exit(f"pg_backlog: conveyor cannot use {url}: {type(exc).__name__}: {exc}")


async def purge(url: str) -> None:
    """Empty a --conveyor-url store (the PostgreSQL schema is recreated instead)."""
    from conveyor import Conveyor

    app = Conveyor(url)
    await app.open()
    try:
        await app.purge(["queued", "scheduled", "completed", "failed", "cancelled"])
    finally:
        await app.close()


def run_driver(args: argparse.Namespace) -> int:
    import psycopg

    schema = f"bench_backlog_{secrets.token_hex(4)}"
    store = with_schema(args.postgres, schema)
    url = args.conveyor_url or store
    if args.url_options and not args.conveyor_url:
        url = f"{store}&{args.url_options}"
    check_backend(url)
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('autovacuum'), "
            "current_setting('synchronous_commit')"
        ).fetchone()
    assert row is not None
    facts = f"PostgreSQL {row[0]} (autovacuum {row[1]}, synchronous_commit {row[2]})"

    def say(message: str) -> None:
        print(f"pg_backlog: {message}", file=sys.stderr, flush=True)

    create_schema(store)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for name, count, fresh in (
            ("small", args.small, False),
            ("deep", args.rows, True),
            ("after", args.small, False),
        ):
            if fresh:
                recreate_schema(store)
                if args.conveyor_url:
                    asyncio.run(purge(url))
            say(f"{name}: queueing {count:,} jobs in {url}")
            fill_rate = asyncio.run(fill(url, count, args.batch_size))
            say(f"{name}: {fill_rate:,.0f} enqueued/s; draining ...")
            result = rates(drain(args, url, count, name))
            result["fill"] = fill_rate
            result["stats"] = table_stats(store)
            runs[name] = result
            say(
                f"{name}: {result['overall']:,.0f} jobs/s over {result['jobs']:,} jobs "
                f"(first window {result['first']:,.0f}/s, last {fmt(result.get('last'))}/s)"
            )
    finally:
        drop_schema(store)
    if args.conveyor_url:
        facts += f" · conveyor on {url} (the table columns are those of an unused schema)"
    elif args.url_options:
        facts += f" · URL options: {args.url_options}"
    text = report(args, runs, facts)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
        say(f"written to {args.output}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/pg_backlog.py", description=__doc__)
    sub = p.add_subparsers(dest="mode")
    w = sub.add_parser("worker", help="(started by the driver)")
    w.add_argument("--url", required=True)
    w.add_argument("--workdir", required=True)
    w.add_argument("--expect", type=int, required=True)
    w.add_argument("--window", type=int, required=True)
    w.add_argument("--concurrency", type=int, required=True)
    w.add_argument("--prefetch", type=int, required=True)
    w.add_argument("--job-ms", type=float, required=True)
    p.add_argument(
        "--postgres",
        default="postgresql://127.0.0.1:5432/test",
        help="database URL without options (loopback only)",
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="jobs in the deep backlog")
    p.add_argument("--small", type=int, default=10_000, help="jobs in the small backlogs")
    p.add_argument("--window", type=int, default=10_000, help="jobs per timing window")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--prefetch", type=int, default=0, help="the worker's prefetch setting")
    p.add_argument(
        "--job-ms",
        type=float,
        default=0.0,
        help="each job awaits asyncio.sleep for this many ms (0: no-op jobs)",
    )
    p.add_argument("--batch-size", type=int, default=1_000, help="jobs per enqueue_many")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per drain")
    p.add_argument("--output", help="also write the markdown report to this file")
    p.add_argument(
        "--conveyor-url",
        help="run the drains on this conveyor URL instead (e.g. sqlite:////tmp/b.db), to try "
        "the script where the PostgreSQL backend is missing",
    )
    p.add_argument(
        "--url-options",
        help="more options for conveyor's URL, e.g. 'vacuum=false' or 'pool_size=4' "
        "(joined with &; the schema is the script's own)",
    )
    args = p.parse_args(argv)
    if args.mode == "worker":
        return args
    for name in ("rows", "small", "window", "concurrency", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.prefetch < 0:
        p.error("--prefetch must be >= 0")
    if args.window > min(args.rows, args.small):
        p.error("--window must not exceed --rows or --small")
    parts = urlsplit(args.postgres)
    if parts.scheme not in ("postgresql", "postgres") or parts.query:
        p.error("--postgres takes postgresql://host:port/db, without ?options")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        p.error(f"--postgres must point at this machine (loopback), got {parts.hostname!r}")
    words = ["python", "benchmarks/pg_backlog.py"]
    for flag, default in (
        ("rows", 1_000_000),
        ("small", 10_000),
        ("window", 10_000),
        ("concurrency", 10),
        ("prefetch", 0),
        ("job_ms", 0.0),
        ("batch_size", 1_000),
    ):
        if getattr(args, flag) != default:
            words += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.url_options:
        if "schema=" in args.url_options:
            p.error("--url-options: the schema is the script's own (bench_backlog_<random>)")
        words += ["--url-options", args.url_options]
    if args.conveyor_url:
        words += ["--conveyor-url", args.conveyor_url]
    args.command = shlex.join(words)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "worker":
        run_worker(args)
        return 0
    return run_driver(args)


if __name__ == "__main__":
    sys.exit(main())
