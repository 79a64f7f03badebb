"""Benchmark conveyor against other job queues on the same server, side by side.

    pip install -e '.[bench]'
    python benchmarks/run.py --jobs 20000                    # Redis peers
    python benchmarks/run.py --suite postgres --jobs 20000   # PostgreSQL peers
    python benchmarks/run.py --suite sqs --jobs 500          # SQS peers, on moto
    python benchmarks/run.py --suite bullmq --jobs 20000     # bullmq:// vs BullMQ's Node worker

Each peer runs in its own driver subprocess (which starts its own worker
subprocess), one peer after the other, each on a store of its own: a Redis
logical DB that is flushed before and after, a PostgreSQL schema that is
created for the run and dropped after it, or a moto server (a local SQS
emulator) started for the peer and stopped after it. See
benchmarks/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
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

from peers import NODE_PEERS, REDIS_SUITES, SUITES  # noqa: E402
from peers.stores import (  # noqa: E402
    MARKER,
    MotoStartError,
    bullmq_url,
    create_schema,
    drop_schema,
    is_postgres,
    is_sqs,
    moto_server,
    moto_version,
    postgres_facts,
    sqs_env,
    sqs_options,
    sqs_url,
    with_schema,
)
from report import merged, render, summary  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "suite": "redis",
    "jobs": None,  # JOBS[suite]
    "batch_size": 1_000,
    "concurrency": 10,
    "latency_jobs": 200,
    "interval": 0.02,
    "peers": None,  # the suite's peers
    "peer_timeout": None,  # PEER_TIMEOUTS[suite]
    "redis": "redis://127.0.0.1:6379",
    "first_db": 1,
    "postgres": "postgresql://127.0.0.1:5432/test",
    "conveyor_url": None,
    "python": [],
    "output": None,  # benchmarks/results.md, or results-<suite>.md
    "flush_nonempty": False,
    "keep_workdir": False,
    "rounds": 1,
}


#: seconds per peer, all phases together: procrastinate, the PostgreSQL suite's
#: reference, needs about 200 s for 20,000 jobs on 2 cores (drain at 200-450/s);
#: on moto every peer is slow, and slower the deeper its queue (see README)
PEER_TIMEOUTS = {"redis": 150.0, "postgres": 300.0, "sqs": 300.0, "bullmq": 150.0}
#: jobs per phase: moto's cost per message grows with the queue's depth, so a
#: run of the SQS suite takes time in the square of this
JOBS = {"redis": 20_000, "postgres": 20_000, "sqs": 500, "bullmq": 20_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="conveyor vs arq, SAQ, RQ, Celery, Dramatiq, taskiq and BullMQ on Redis "
        "(--suite redis), vs procrastinate, PgQueuer and Oban on PostgreSQL "
        "(--suite postgres), vs Celery on SQS, emulated by moto (--suite sqs), or on "
        "bullmq:// vs BullMQ's own Node worker, in BullMQ's layout (--suite bullmq).",
    )
    p.add_argument("--suite", choices=sorted(SUITES), help="which server and peers (redis)")
    p.add_argument(
        "--jobs",
        type=int,
        help="no-op jobs per enqueue phase and for the drain (sqs: 500; other suites: 20000)",
    )
    p.add_argument("--batch-size", type=int, help="jobs per batch call")
    p.add_argument("--concurrency", type=int, help="concurrency of the one worker process")
    p.add_argument("--latency-jobs", type=int, help="jobs in the latency phase")
    p.add_argument("--interval", type=float, help="seconds between latency jobs")
    p.add_argument(
        "--peers",
        help="comma-separated subset of the suite's peers: "
        + "; ".join(f"{suite}: {','.join(names)}" for suite, names in SUITES.items()),
    )
    p.add_argument(
        "--peer-timeout",
        type=float,
        help="seconds allowed per peer, all phases together (redis, bullmq: 150; postgres, "
        "sqs: 300)",
    )
    p.add_argument(
        "--redis", help="redis and bullmq suites: server URL without a DB (loopback only)"
    )
    p.add_argument(
        "--first-db",
        type=int,
        help="redis and bullmq suites: logical DB of the first peer; peer i uses first-db + i, "
        "in the order of the suite's peers (redis: conveyor, conveyor_prefetch, arq, saq, rq, "
        "celery, dramatiq, taskiq, bullmq; bullmq: conveyor, conveyor_prefetch, bullmq, "
        "bullmq_keep1000)",
    )
    p.add_argument(
        "--postgres",
        help="postgres suite: database URL without options (loopback only); each peer gets "
        "a schema bench_<peer>_<random> there, created and dropped by the run",
    )
    p.add_argument(
        "--conveyor-url",
        help="URL for the conveyor peer instead of the suite's store, e.g. "
        "sqlite:////tmp/b{db}.db (to try the harness on another backend); '{db}' is "
        "replaced by the peer's DB number (redis), schema name (postgres) or moto endpoint "
        "(sqs: sqs://b?region=us-east-1&endpoint_url={db}&create=true&store=...)",
    )
    p.add_argument(
        "--python",
        action="append",
        metavar="PEER=PATH",
        help="run this peer's driver and worker under another interpreter (which needs the "
        "peer's library and its server's client: redis-py or psycopg), e.g. "
        "oban=/opt/py312/bin/python; repeatable",
    )
    p.add_argument("--output", help="markdown file to write the results to")
    p.add_argument(
        "--flush-nonempty",
        action="store_true",
        help="redis and bullmq suites: FLUSHDB peer DBs even if they hold keys this harness "
        "did not write",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and raw JSON")
    p.add_argument(
        "--rounds",
        type=int,
        help="run every peer this many times, each peer in turn round after round; each "
        "figure is then the median of its rounds, and the report lists every round's "
        "(default 1: on a small machine figures move 20-50%% from one run to the next)",
    )
    p.set_defaults(**DEFAULTS)
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = JOBS[args.suite]
    known = SUITES[args.suite]
    args.peers = args.peers or ",".join(known)
    args.peer_list = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = [name for name in args.peer_list if name not in known]
    if unknown:
        p.error(
            f"unknown peer(s) in the {args.suite} suite: {', '.join(unknown)}; "
            f"known: {', '.join(known)}"
        )
    if min(args.jobs, args.batch_size, args.concurrency, args.latency_jobs, args.rounds) < 1:
        p.error("--jobs, --batch-size, --concurrency, --latency-jobs and --rounds must be >= 1")
    for option in ("redis", "postgres"):
        host = urlsplit(getattr(args, option)).hostname or ""
        if not _is_loopback(host):
            p.error(f"--{option} must point at this machine (loopback), got {host!r}")
    if urlsplit(args.redis).path.strip("/"):
        p.error("--redis takes no DB number: each peer gets its own (see --first-db)")
    parts = urlsplit(args.postgres)
    if parts.scheme not in ("postgresql", "postgres") or parts.query or parts.fragment:
        p.error("--postgres takes postgresql://host:port/db, without ?options")
    args.python_for = {}
    for item in args.python:
        peer, sep, path = item.partition("=")
        if not sep or peer not in known or not path:
            p.error(f"--python takes PEER=PATH with a peer of the {args.suite} suite: {item!r}")
        if peer in NODE_PEERS:
            p.error(f"--python: {peer} is not a Python peer")
        if shutil.which(path) is None:
            p.error(f"--python {peer}: no such executable: {path}")
        args.python_for[peer] = path
    if args.peer_timeout is None:
        args.peer_timeout = PEER_TIMEOUTS[args.suite]
    if args.output is None:
        name = "results.md" if args.suite == "redis" else f"results-{args.suite}.md"
        args.output = str(BENCH / name)
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
    words = [shown or "python", script_shown]
    if args.suite != DEFAULTS["suite"]:
        words += ["--suite", args.suite]
    words += ["--jobs", str(args.jobs)]
    for name, default in DEFAULTS.items():
        value = getattr(args, name)
        if name in ("suite", "jobs", "output", "keep_workdir") or value == default:
            continue
        if name == "peers" and value == ",".join(SUITES[args.suite]):
            continue
        if name == "peer_timeout" and value == PEER_TIMEOUTS[args.suite]:
            continue
        if name in ("redis", "first_db", "flush_nonempty") and args.suite not in REDIS_SUITES:
            continue
        if name == "postgres" and args.suite != "postgres":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words += [flag]
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


# ------------------------------------------------------------------------------ stores


@dataclass
class Store:
    """Where one peer keeps its data for the run."""

    url: str  # what the driver empties between phases: a Redis DB or a PostgreSQL schema
    tag: str  # its DB number or schema name ('{db}' in --conveyor-url)
    where: str  # for the progress log
    #: what the peer connects to, when not `url` itself: conveyor's bullmq://
    #: URL on that Redis DB in the bullmq suite
    peer_url: str = ""


def stores_for(args: argparse.Namespace) -> dict[str, Store]:
    if args.suite in REDIS_SUITES:
        stores = {}
        for index, name in enumerate(SUITES[args.suite]):
            if name not in args.peer_list:
                continue
            db = args.first_db + index
            url = f"{args.redis}/{db}"
            # Node's bench.mjs takes the DB's redis:// URL; its queue and
            # prefix are those bullmq_url names.
            bull = args.suite == "bullmq" and name not in NODE_PEERS
            stores[name] = Store(url, str(db), f"DB {db}", bullmq_url(url) if bull else "")
        return {name: stores[name] for name in args.peer_list}
    if args.suite == "sqs":
        # made when the peer's moto server is up (sqs_store): its port is free then
        return {name: Store("", "", "a moto server of its own") for name in args.peer_list}
    stores = {}
    for name in args.peer_list:
        # random, so that no run ever meets a schema it did not create itself
        schema = f"bench_{name}_{secrets.token_hex(4)}"
        stores[name] = Store(with_schema(args.postgres, schema), schema, f"schema {schema}")
    return stores


def describe_server(args: argparse.Namespace, stores: dict[str, Store]) -> str:
    """Check the server is there (and, on Redis, that the DBs are free); describe it."""
    if args.suite in REDIS_SUITES:
        try:
            version = redis_version(args.redis)
        except Exception as exc:
            sys.exit(f"cannot reach Redis at {args.redis}: {exc}")
        check_dbs({name: store.url for name, store in stores.items()}, args.flush_nonempty)
        host = urlsplit(args.redis).hostname
        return f"Node {node_version()} · Redis {version} on {host}"
    if args.suite == "sqs":
        return describe_moto()
    try:
        facts = postgres_facts(args.postgres)
    except Exception as exc:
        sys.exit(f"cannot reach PostgreSQL at {args.postgres}: {exc}")
    host = urlsplit(args.postgres).hostname
    return (
        f"PostgreSQL {facts['version']} on {host} (autovacuum {facts['autovacuum']}, "
        f"synchronous_commit {facts['synchronous_commit']}, fsync {facts['fsync']}, "
        f"shared_buffers {facts['shared_buffers']})"
    )


def describe_moto() -> str:
    """Check this interpreter can run moto's server (which the SQS suite
    starts once per peer); describe it."""
    version = moto_version()
    try:
        import flask  # noqa: F401 - `moto.server` needs moto[server]
        import moto.server  # noqa: F401
    except ImportError as exc:
        sys.exit(
            f"the sqs suite runs `{sys.executable} -m moto.server`, which cannot be imported "
            f"({exc}); pip install 'moto[server]' (moto {version} found)"
        )
    return (
        f"moto {version} server (`python -m moto.server`, a fresh one per peer on 127.0.0.1, "
        f"region us-east-1)"
    )


def sqs_store(name: str, endpoint: str, peer_dir: Path) -> Store:
    """The SQS suite's URL for a peer: conveyor's SQS form, which the other
    peers translate (see peers/celery_peer.py); conveyor_sqlite's adds its
    SQLite store, a file in the peer's temporary directory."""
    store = f"sqlite:///{peer_dir / 'store.db'}" if name == "conveyor_sqlite" else None
    return Store(sqs_url("bench", endpoint, store), endpoint, f"moto at {endpoint}")


def backend_label(url: str) -> str:
    """`sqlite://`, or `sqs:// + redis://` for SQS with a store."""
    scheme = url.partition("://")[0]
    store = sqs_options(url).get("store") if is_sqs(url) else None
    return f"{scheme}://" + (f" + {store.partition('://')[0]}://" if store else "")


def redis_client(url: str) -> Any:
    from redis import Redis

    return Redis.from_url(url, socket_connect_timeout=3)


def redis_version(base: str) -> str:
    with redis_client(f"{base}/0") as r:
        info = r.info("server")
    return str(info.get("redis_version", "?"))


def check_dbs(urls: dict[str, str], force: bool) -> None:
    busy = []
    for peer, url in urls.items():
        with redis_client(url) as r:
            if r.dbsize() and not r.exists(MARKER) and not force:
                busy.append(f"{peer} ({url}: {r.dbsize()} keys)")
    if busy:
        sys.exit(
            "refusing to FLUSHDB Redis DBs that hold keys this harness did not write: "
            + ", ".join(busy)
            + ". Use --first-db to pick free DBs, or --flush-nonempty."
        )


def claim_store(url: str) -> None:
    if is_postgres(url):
        create_schema(url)  # the driver flushes a Redis DB (or SQS queues) itself


def release_store(url: str) -> None:
    if is_postgres(url):
        drop_schema(url)
    elif is_sqs(url):
        pass  # its moto server is stopped after the peer
    else:
        with redis_client(url) as r:
            r.flushdb()


# ------------------------------------------------------------------------------ running


def node_package_version(name: str, installed: bool) -> str | None:
    """The version of benchmarks/node's dependency `name` that package.json
    pins, or (`installed`) that node_modules holds (None: not there)."""
    if installed:
        path = NODE_DIR / "node_modules" / name / "package.json"
        return json.loads(path.read_text())["version"] if path.is_file() else None
    pins: dict[str, str] = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    return pins.get(name)


def bullmq_pin_problem() -> str | None:
    """Why benchmarks/node's BullMQ is not the bullmq suite's peer: it must be
    the Node release whose Lua scripts conveyor's bullmq:// runs, the same
    layout, meta.version and scripts on both sides."""
    from conveyor.backends.bullmq.scripts import NODE_VERSION

    pinned = node_package_version("bullmq", installed=False)
    if pinned == NODE_VERSION:
        return None
    return (
        f"n/a (benchmarks/node pins bullmq {pinned}; conveyor's bullmq:// runs the scripts "
        f"of bullmq {NODE_VERSION})"
    )


def ensure_node() -> str | None:
    """Install benchmarks/node's pinned packages where node_modules lacks them
    (or holds another bullmq); the reason BullMQ can't run, or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return "n/a (node not found)"
    wanted = node_package_version("bullmq", installed=False)
    if node_package_version("bullmq", installed=True) != wanted:
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
    name: str, store: Store, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    peer_dir = workdir / name
    peer_dir.mkdir()
    if args.suite != "sqs":
        return run_driver(name, store, args, peer_dir, dict(os.environ), log)
    # A moto server per peer: each starts on an empty emulator, and nothing a
    # killed peer left running (a long poll, a worker) reaches the next one.
    try:
        with moto_server(peer_dir / "moto.log") as endpoint:
            store = sqs_store(name, endpoint, peer_dir)
            log(f"  {name}: moto at {endpoint}")
            return run_driver(name, store, args, peer_dir, sqs_env(dict(os.environ)), log)
    except MotoStartError as exc:
        return {"peer": name, "status": f"error: {exc}", "phases": {}}


def run_driver(
    name: str,
    store: Store,
    args: argparse.Namespace,
    peer_dir: Path,
    env: dict[str, str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    own_url = store.peer_url or store.url
    url = own_url
    if name == "conveyor" and args.conveyor_url:
        url = args.conveyor_url.replace("{db}", store.tag)
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
    if name in NODE_PEERS:
        reason = (bullmq_pin_problem() if args.suite == "bullmq" else None) or ensure_node()
        if reason is not None:
            return {"peer": name, "status": reason, "phases": {}}
        command = [shutil.which("node") or "node", str(NODE_DIR / "bench.mjs"), "driver", *flags]
        command += [f"--suite={args.suite}", f"--peer={name}"]
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
        python = args.python_for.get(name, sys.executable)
        command = [python, "-m", "peers.harness", "driver", f"--peer={name}"]
        command += [*flags, f"--store-url={store.url}"]
    started = time.monotonic()
    try:
        claim_store(store.url)
    except Exception as exc:
        return {"peer": name, "status": f"error: cannot create its store: {exc}", "phases": {}}
    try:
        with open(peer_dir / "driver.log", "wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                proc.wait(args.peer_timeout + 30.0)
            except subprocess.TimeoutExpired:
                log(f"{name}: over its time cap, killing it")
            finally:
                _kill_group(proc)  # the driver and the worker it started
    finally:
        release_store(store.url)
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
    if url != own_url:  # conveyor on another backend: shown, but not a ratio base
        result["label"] = f"{name} ({backend_label(url)})"
    return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "not found"
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().lstrip("v") or "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stores = stores_for(args)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_revision(),
        "server": describe_server(args, stores),
        "load": load_average(),
        "command": reproduce_command(args),
    }

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in args.peer_list}
    try:
        for n in range(1, args.rounds + 1):
            # Peers in turn within each round: a slow spell of the machine
            # falls on every peer's figures, not on one peer's.
            round_dir = workdir / f"round-{n}" if args.rounds > 1 else workdir
            round_dir.mkdir(exist_ok=True)
            shown = f" (round {n} of {args.rounds})" if args.rounds > 1 else ""
            for name in args.peer_list:
                store = stores[name]
                log(f"{name}{shown}: running on {store.where} (cap {args.peer_timeout:.0f} s) ...")
                result = run_peer(name, store, args, round_dir, log)
                rounds[name].append(result)
                log(f"  {summary(result)}  [{result['elapsed_s']:.0f} s]")
    finally:
        if args.keep_workdir:
            log(f"logs and raw results kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    # Other load on the machine moves every figure: the reader sees how much
    # there was, at the start and at the end.
    meta["load"] += f" (at the end {load_average()})"
    results = [merged(runs) for runs in rounds.values() if runs]
    report = render(results, args, meta)
    print(report)
    Path(args.output).write_text(report)
    log(f"written to {args.output}")
    log(f"reproduce: {meta['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
