"""Benchmark conveyor against other Redis job queues, side by side.

    pip install -e '.[bench]'
    python benchmarks/run.py --jobs 20000

Each peer runs in its own driver subprocess (which starts its own worker
subprocess), one peer after the other, each on its own Redis logical DB that is
flushed before and after. See benchmarks/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NODE_DIR = BENCH / "node"
sys.path.insert(0, str(BENCH))

from peers import ALL_PEERS, NODE_PEERS, PYTHON_PEERS  # noqa: E402

MARKER = "conveyor-bench:owner"  # the same as peers.harness.MARKER (kept import-free)

DEFAULTS: dict[str, Any] = {
    "jobs": 20_000,
    "batch_size": 1_000,
    "concurrency": 10,
    "latency_jobs": 200,
    "interval": 0.02,
    "peers": ",".join(ALL_PEERS),
    "peer_timeout": 150.0,
    "redis": "redis://127.0.0.1:6379",
    "first_db": 1,
    "conveyor_url": None,
    "output": str(BENCH / "results.md"),
    "flush_nonempty": False,
    "keep_workdir": False,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="conveyor vs arq, SAQ, RQ, Celery, Dramatiq, taskiq and BullMQ on Redis.",
    )
    p.add_argument("--jobs", type=int, help="no-op jobs per enqueue phase and for the drain")
    p.add_argument("--batch-size", type=int, help="jobs per batch call")
    p.add_argument("--concurrency", type=int, help="concurrency of the one worker process")
    p.add_argument("--latency-jobs", type=int, help="jobs in the latency phase")
    p.add_argument("--interval", type=float, help="seconds between latency jobs")
    p.add_argument("--peers", help=f"comma-separated subset of {','.join(ALL_PEERS)}")
    p.add_argument(
        "--peer-timeout", type=float, help="seconds allowed per peer, all phases together"
    )
    p.add_argument("--redis", help="Redis server URL without a DB (loopback only)")
    p.add_argument(
        "--first-db",
        type=int,
        help="logical DB of the first peer; peer i uses first-db + i, in the order of --peers "
        "defaults (conveyor, arq, saq, rq, celery, dramatiq, taskiq, bullmq)",
    )
    p.add_argument(
        "--conveyor-url",
        help="URL for the conveyor peer instead of its Redis DB, e.g. sqlite:///tmp/b.db "
        "(to try the harness on another backend); '{db}' is replaced by its DB number",
    )
    p.add_argument("--output", help="markdown file to write the results to")
    p.add_argument(
        "--flush-nonempty",
        action="store_true",
        help="FLUSHDB peer DBs even if they hold keys this harness did not write",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and raw JSON")
    p.set_defaults(**DEFAULTS)
    args = p.parse_args(argv)
    args.peer_list = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = [name for name in args.peer_list if name not in ALL_PEERS]
    if unknown:
        p.error(f"unknown peer(s): {', '.join(unknown)}; known: {', '.join(ALL_PEERS)}")
    if args.jobs < 1 or args.batch_size < 1 or args.concurrency < 1 or args.latency_jobs < 1:
        p.error("--jobs, --batch-size, --concurrency and --latency-jobs must be >= 1")
    host = urlsplit(args.redis).hostname or ""
    if not _is_loopback(host):
        p.error(f"--redis must point at this machine (loopback), got {host!r}")
    if urlsplit(args.redis).path.strip("/"):
        p.error("--redis takes no DB number: each peer gets its own (see --first-db)")
    return args


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reproduce_command(args: argparse.Namespace) -> str:
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd())) if python.is_relative_to(Path.cwd()) else ""
    except ValueError:
        shown = ""
    script = Path(__file__).resolve()
    script_shown = (
        str(script.relative_to(Path.cwd())) if script.is_relative_to(Path.cwd()) else str(script)
    )
    words = [shown or "python", script_shown, "--jobs", str(args.jobs)]
    for name, default in DEFAULTS.items():
        value = getattr(args, name)
        if name in ("jobs", "output", "keep_workdir") or value == default:
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if isinstance(value, bool) else [flag, str(value)]
    return shlex.join(words)


# ------------------------------------------------------------------------------ Redis


def redis_client(url: str) -> Any:
    from redis import Redis

    return Redis.from_url(url, socket_connect_timeout=3)


def redis_version(base: str) -> str:
    with redis_client(f"{base}/0") as r:
        info = r.info("server")
    return str(info.get("redis_version", "?"))


def check_dbs(base: str, dbs: dict[str, int], force: bool) -> None:
    busy = []
    for peer, db in dbs.items():
        with redis_client(f"{base}/{db}") as r:
            if r.dbsize() and not r.exists(MARKER) and not force:
                busy.append(f"{peer} (DB {db}: {r.dbsize()} keys)")
    if busy:
        sys.exit(
            "refusing to FLUSHDB Redis DBs that hold keys this harness did not write: "
            + ", ".join(busy)
            + ". Use --first-db to pick free DBs, or --flush-nonempty."
        )


def flush(url: str) -> None:
    with redis_client(url) as r:
        r.flushdb()


# ------------------------------------------------------------------------------ running


def ensure_node() -> str | None:
    """Install benchmarks/node's packages if missing; the reason BullMQ can't run, or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return "n/a (node not found)"
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        if npm is None:
            return "n/a (npm not found)"
        print("benchmarks/node: running npm install ...", file=sys.stderr)
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return f"n/a (npm install failed: {done.stderr.strip().splitlines()[-1:]})"
    return None


def run_peer(
    name: str, db: int, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    redis_url = f"{args.redis}/{db}"
    url = redis_url
    if name == "conveyor" and args.conveyor_url:
        url = args.conveyor_url.replace("{db}", str(db))
    peer_dir = workdir / name
    peer_dir.mkdir()
    common = {
        "url": url,
        "workdir": str(peer_dir),
        "jobs": args.jobs,
        "batch-size": args.batch_size,
        "concurrency": args.concurrency,
        "latency-jobs": args.latency_jobs,
        "interval": args.interval,
        "budget": args.peer_timeout,
        "latency-reserve": 5.0 + 2.0 + args.latency_jobs * args.interval + 10.0,
    }
    flags = [f"--{key}={value}" for key, value in common.items()]
    env = dict(os.environ)
    if name in NODE_PEERS:
        reason = ensure_node()
        if reason is not None:
            return {"peer": name, "status": reason, "phases": {}}
        command = [shutil.which("node") or "node", str(NODE_DIR / "bench.mjs"), "driver", *flags]
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "peers.harness", "driver", f"--peer={name}"]
        command += [*flags, f"--redis-url={redis_url}"]
    started = time.monotonic()
    with open(peer_dir / "driver.log", "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            proc.wait(args.peer_timeout + 30.0)
        except subprocess.TimeoutExpired:
            log(f"{name}: over its time cap, killing it")
        except KeyboardInterrupt:
            _kill_group(proc)
            flush(redis_url)
            raise
        finally:
            _kill_group(proc)  # the driver and the worker it started
    flush(redis_url)
    elapsed = time.monotonic() - started
    result: dict[str, Any] = {"peer": name, "status": "error: no result", "phases": {}}
    path = peer_dir / "result.json"
    if path.exists():
        result = json.loads(path.read_text())
    if result.get("status") == "running" or proc.returncode not in (0, None):
        tail = (peer_dir / "driver.log").read_text(errors="replace").strip().splitlines()
        if result.get("status") == "running":
            if proc.returncode is None or proc.returncode < 0:
                result["status"] = f"killed after {elapsed:.0f} s"
            else:
                result["status"] = "error: " + (tail[-1] if tail else f"exit {proc.returncode}")
    result["elapsed_s"] = elapsed
    if url != redis_url:  # conveyor on another backend: shown, but not a ratio base
        result["label"] = f"{name} ({url.partition('://')[0]}://)"
    return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ------------------------------------------------------------------------------ report


@dataclass
class Column:
    title: str
    phase: str
    key: str
    higher_is_better: bool
    unit: str


COLUMNS = [
    Column("enqueue/s, one at a time", "enqueue_single", "rate", True, "/s"),
    Column("enqueue/s, batched", "enqueue_batched", "rate", True, "/s"),
    Column("drain/s (1 worker process)", "drain", "rate", True, "/s"),
    Column("p50 enqueue→start", "latency", "p50_ms", False, " ms"),
    Column("p99 enqueue→start", "latency", "p99_ms", False, " ms"),
]


def value_of(result: dict[str, Any], column: Column) -> float | None:
    data = result.get("phases", {}).get(column.phase)
    if not data or data.get("timeout") or column.key not in data:
        return None
    return float(data[column.key])


def fmt_number(value: float, unit: str) -> str:
    if unit == " ms":
        return f"{value:,.1f} ms" if value >= 10 else f"{value:,.2f} ms"
    return f"{value:,.0f}"


def cell(result: dict[str, Any], column: Column, best: float | None) -> str:
    status = result.get("status", "")
    data = result.get("phases", {}).get(column.phase)
    if not data:
        if status != "ok":
            return status if column is COLUMNS[0] else "n/a"
        if column.phase == "enqueue_batched":
            return "—"
        return "n/a"
    if "error" in data:
        return "error (see details)"
    if "skipped" in data:
        return f"skipped ({data['skipped']})"
    if column.phase == "drain" and data.get("timeout"):
        return f"timeout after {data['seconds']:.0f} s ({data['done']:,} jobs done)"
    if column.phase == "latency" and data.get("timeout"):
        return f"timeout ({data['done']} of {data['count']} started)"
    value = float(data[column.key])
    text = fmt_number(value, column.unit)
    if column.phase.startswith("enqueue") and data.get("timeout"):
        text += f" (timeout after {data['seconds']:.0f} s, {data['count']:,} enqueued)"
    if column.phase == "latency" and data.get("min_ms", 0.0) < 0:
        text += " (clock error: negative samples)"
    if best:
        ratio = value / best
        text += f" ({ratio:.2f}x)" if ratio < 10 else f" ({ratio:.0f}x)"
    return text


def name_of(result: dict[str, Any]) -> str:
    return str(result.get("label") or result["peer"])


def versions_text(result: dict[str, Any]) -> str:
    versions: dict[str, str] = result.get("versions") or {}
    return ", ".join(f"{k} {v}" for k, v in versions.items()) or "?"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "conveyor"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes in conveyor/' if dirty else ''}"


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "not found"
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().lstrip("v") or "?"


def render(results: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, str]) -> str:
    best: dict[str, float | None] = {}
    for column in COLUMNS:
        values = [
            v
            for r in results
            if r["peer"] in PYTHON_PEERS
            and "label" not in r
            and (v := value_of(r, column)) is not None
        ]
        best[column.title] = (
            (max(values) if column.higher_is_better else min(values)) if values else None
        )
    lines = [
        "# Redis job queues, side by side",
        "",
        f"- run: {meta['date']} · conveyor {meta['git']}",
        f"- Python {platform.python_version()} · Node {meta['node']} · {os.cpu_count()} CPUs · "
        f"Redis {meta['redis']} on {urlsplit(args.redis).hostname} · "
        f"{platform.system()} {platform.machine()} · load average at start {meta['load']}",
        f"- workload: {args.jobs:,} no-op jobs per phase; batches of {args.batch_size:,}; "
        f"ONE worker process at concurrency {args.concurrency}; latency: "
        f"{args.latency_jobs} jobs, one every {args.interval * 1000:.0f} ms, on an idle worker",
        "- ratio in brackets = value ÷ the best **Python** peer's value in that column "
        "(throughput: 1.00x is the fastest, lower is slower; latency: 1.00x is the lowest, "
        "higher is slower)",
        "",
        "| peer | versions | " + " | ".join(c.title for c in COLUMNS) + " |",
        "|---|---|" + "--:|" * len(COLUMNS),
    ]
    for r in results:
        cells = [cell(r, c, best[c.title]) for c in COLUMNS]
        lines.append(f"| {name_of(r)} | {versions_text(r)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Settings per peer",
        "",
        "| peer | worker | batch call | notes |",
        "|---|---|---|---|",
    ]
    for r in results:
        batch = r.get("batch_call") or f"— ({r.get('no_batch_reason') or 'none'})"
        lines.append(
            f"| {name_of(r)} | {r.get('settings', '?')} | {batch} | {r.get('notes') or ''} |"
        )
    lines += [
        "",
        "## Details",
        "",
        "| peer | drain s | worker start → 1st job s | spawn → worker start s "
        "| latency mean ms | latency max ms | peer wall time s | status |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        drain = r.get("phases", {}).get("drain") or {}
        lat = r.get("phases", {}).get("latency") or {}
        errors = [f"{k}: {v['error']}" for k, v in r.get("phases", {}).items() if "error" in v]

        def num(data: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
            return fmt.format(data[key]) if key in data and not data.get("timeout") else "—"

        lines.append(
            f"| {name_of(r)} | {num(drain, 'seconds')} | {num(drain, 'startup_s', '{:.3f}')} "
            f"| {num(drain, 'spawn_to_start_s')} | {num(lat, 'mean_ms')} | {num(lat, 'max_ms')} "
            f"| {r.get('elapsed_s', 0):.0f} | {'; '.join([r.get('status', '?'), *errors])} |"
        )
    lines += [
        "",
        "Reproduce (from the repository root, in the environment where "
        "`pip install -e '.[bench]'` was run):",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "How each figure is measured, and the caveats: benchmarks/README.md.",
        "",
    ]
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    parts = []
    for column in COLUMNS:
        value = value_of(result, column)
        if value is not None:
            parts.append(f"{column.phase}.{column.key}={fmt_number(value, column.unit)}")
    return f"{result['peer']}: {result.get('status')} " + " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    order = {name: args.first_db + i for i, name in enumerate(ALL_PEERS)}
    dbs = {name: order[name] for name in args.peer_list}
    try:
        version = redis_version(args.redis)
    except Exception as exc:
        sys.exit(f"cannot reach Redis at {args.redis}: {exc}")
    check_dbs(args.redis, dbs, args.flush_nonempty)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_revision(),
        "node": node_version(),
        "redis": version,
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": reproduce_command(args),
    }

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    results = []
    try:
        for name in args.peer_list:
            log(f"{name}: running on DB {dbs[name]} (cap {args.peer_timeout:.0f} s) ...")
            result = run_peer(name, dbs[name], args, workdir, log)
            results.append(result)
            log(f"  {summary(result)}  [{result['elapsed_s']:.0f} s]")
    finally:
        if args.keep_workdir:
            log(f"logs and raw results kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(results, args, meta)
    print(report)
    Path(args.output).write_text(report)
    log(f"written to {args.output}")
    log(f"reproduce: {meta['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
