"""Crash tests on Redis: a worker SIGKILLed mid-job, and Redis itself
restarted under running workers and under a producer.

The first test uses the shared test server (a key prefix of its own). The
restart tests run a redis-server of their own, writing every change to an
append-only file with an fsync before it answers, as a production Redis with
persistence would: a graceful restart keeps every acknowledged write.

Every handler run leaves lines in runs.log next to the app module:
`start <id> <attempt> <pid>` when it starts, `finish ...` right before it
returns, and `acked ...` from the worker's `job.completed` event, which fires
only once Redis accepted the completion. The order of the lines is the order
of the writes (one short O_APPEND write each), across processes.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from availability import free_port

from conveyor import BackendUnavailableError, Conveyor, Job, JobState
from conveyor.worker import STOP_GRACE

from .helpers import WAIT, WorkerProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.redis]

APP_MODULE = "redisjobs"
APP_SOURCE = """
import asyncio
import os
from pathlib import Path

from conveyor import Conveyor, JobContext

HERE = Path(__file__).resolve().parent
app = Conveyor()  # the URL comes from CONVEYOR_URL


def record(what: str, job_id: str, attempt: int) -> None:
    with open(HERE / "runs.log", "a") as log:
        log.write(f"{what} {job_id} {attempt} {os.getpid()}\\n")


@app.on("job.completed")
def acknowledged(event) -> None:
    # Fired once Redis accepted the completion; a refused one fires nothing.
    record("acked", event.job.id, event.job.attempts)


@app.job("crash.slow", timeout=None)
async def crash_slow(payload: dict, ctx: JobContext) -> dict:
    record("start", ctx.job_id, ctx.attempt)
    if ctx.attempt == 1:
        await asyncio.sleep(120)  # the test kills the worker during this
    record("finish", ctx.job_id, ctx.attempt)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@app.job("crash.quick")
async def crash_quick(payload: dict, ctx: JobContext) -> dict:
    record("start", ctx.job_id, ctx.attempt)
    await asyncio.sleep(payload.get("seconds", 0))
    record("finish", ctx.job_id, ctx.attempt)
    return {"attempt": ctx.attempt, "pid": os.getpid()}
"""
JOB_NAMES = ("crash.slow", "crash.quick")

Row = tuple[str, str, int, int]  # what, job id, attempt, pid


def _unavailable(reason: str) -> None:
    """Skip, or fail when $CI is set (DESIGN section 4)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def _rows(log: Path) -> list[Row]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        what, job_id, attempt, pid = line.split()
        rows.append((what, job_id, int(attempt), int(pid)))
    return rows


def _count(log: Path, what: str, job_id: str | None = None) -> int:
    return sum(1 for w, j, _, _ in _rows(log) if w == what and job_id in (None, j))


def _complete(reply: bytes) -> bool:
    """Whether a simple (+ - :) or bulk ($) reply is all there."""
    head, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return False
    if head.startswith(b"$") and int(head[1:]) >= 0:
        return len(rest) >= int(head[1:]) + 2
    return True


# --------------------------------------------------------------------------- a server of our own


class RedisServer:
    """A redis-server on a free local port whose data survives a restart:
    append-only file in `workdir`, fsync'ed on every write, no RDB snapshots."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.runs}.log"

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.runs += 1
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        eventually(self._ready, f"redis-server on port {self.port} to answer PING", timeout=10)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # not -LOADING
        except OSError:
            return False

    def command(self, *args: str) -> str:
        """One command on a connection of its own; the raw reply."""
        packed = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(packed.encode())
            reply = b""
            while not _complete(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"redis-server closed the connection: {reply!r}")
                reply += chunk
        return reply.decode()

    def stop(self) -> None:
        """Graceful shutdown: on SIGTERM Redis syncs its append-only file and exits 0."""
        assert self.proc is not None, "not running"
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=WAIT)
        assert code == 0, f"redis-server exited with {code}:\n{self.log()}"

    def close(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=WAIT)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else "(no log)"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server started (and always stopped) by this test."""
    try:
        importlib.import_module("conveyor.backends.redis")
    except Exception as exc:
        _unavailable(f"redis backend unavailable: {type(exc).__name__}: {exc}")
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server is not on PATH; the Redis restart tests need their own server")
    assert binary is not None
    workdir = tmp_path / "redis-data"
    workdir.mkdir()
    server = RedisServer(binary, workdir)
    try:
        server.start()
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- app, workers, producer


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    (tmp_path / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    return tmp_path


@pytest.fixture
def start_worker(jobs_dir: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`python -m conveyor worker redisjobs:app ARGS` against URL (CONVEYOR_URL);
    every one started is killed if need be and reaped at the end."""
    started: list[WorkerProcess] = []

    def start(url: str, *args: str) -> WorkerProcess:
        worker = WorkerProcess(jobs_dir, url, [f"{APP_MODULE}:app", *args], f"w{len(started)}")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def producer_for() -> Iterator[Callable[[str], Conveyor]]:
    """Apps in the test process that enqueue and inspect the test app's jobs."""
    apps: list[Conveyor] = []

    def make(url: str) -> Conveyor:
        app = Conveyor(url)
        for name in JOB_NAMES:
            app.job(name, timeout=None)(lambda payload: None)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close_sync()


def _stats(app: Conveyor) -> dict[str, int]:
    return app.stats_sync().get("default", {})


# --------------------------------------------------------------------------- 1. SIGKILL


def test_killed_worker_job_is_run_again_by_the_next_worker(
    redis_urls: Callable[[], str],
    jobs_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    producer_for: Callable[[str], Conveyor],
) -> None:
    url = redis_urls()
    producer = producer_for(url)
    log = jobs_dir / "runs.log"
    # Priority -1: the slow job is claimed first, so it is surely running
    # while the first worker also works through the quick ones.
    slow = producer.enqueue_sync("crash.slow", {}, priority=-1)
    first_quick = producer.enqueue_many_sync([("crash.quick", {"n": n}) for n in range(10)])

    first = start_worker(url, "--lease", "1", "--concurrency", "4")
    eventually(lambda: _count(log, "start", slow.id) == 1, "the slow job to start")
    # Kill only once the quick jobs are acknowledged: one killed mid-run would
    # rightly run twice (at-least-once), and this test checks the others don't.
    eventually(lambda: _stats(producer).get("completed") == 10, "the first quick jobs")
    # The worker logs `acked` once the backend's answer reached it, a moment
    # after the state shows in Redis: killed in between, a line is missing.
    eventually(lambda: _count(log, "acked") == 10, "the first quick jobs' acked lines")
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL

    second_quick = producer.enqueue_many_sync([("crash.quick", {"n": n}) for n in range(10, 20)])
    second = start_worker(url, "--lease", "1", "--concurrency", "4")

    done = producer.wait_sync(slow.id, timeout=20)
    assert done.state is JobState.COMPLETED, (done.error, second.output())
    assert done.attempts == 2
    assert done.result == {"attempt": 2, "pid": second.pid}
    eventually(lambda: _stats(producer).get("completed") == 21, "the second quick jobs")
    eventually(lambda: _count(log, "acked") == 21, "every acked line")
    assert _stats(producer) == {
        "scheduled": 0,
        "queued": 0,
        "running": 0,
        "completed": 21,
        "failed": 0,
        "cancelled": 0,
    }

    rows = _rows(log)
    slow_runs = [(what, attempt, pid) for what, job_id, attempt, pid in rows if job_id == slow.id]
    assert slow_runs == [
        ("start", 1, first.pid),
        ("start", 2, second.pid),
        ("finish", 2, second.pid),
        ("acked", 2, second.pid),
    ], rows
    # The second worker got it back through lease expiry, not some other way.
    assert re.search(rf"job crash\.slow {slow.id}: its worker's lease expired", second.output())

    quick_ids = {job.id for job in [*first_quick, *second_quick]}
    for what in ("start", "finish", "acked"):
        ran = [job_id for w, job_id, _, _ in rows if w == what and job_id != slow.id]
        assert sorted(ran) == sorted(quick_ids), (what, rows)  # each exactly once
    assert all(attempt == 1 for _, job_id, attempt, _ in rows if job_id in quick_ids), rows

    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.output()


# --------------------------------------------------------------------------- 2. Redis restart

JOBS = 300
CONCURRENCY = 4
WORKERS = 2


def _unreachable(server: RedisServer) -> re.Pattern[str]:
    return re.compile(rf"Redis at redis://127\.0\.0\.1:{server.port}/0 is unreachable")


def _reachable(server: RedisServer) -> re.Pattern[str]:
    return re.compile(
        rf"Redis at redis://127\.0\.0\.1:{server.port}/0 reachable again after \d+\.\d s"
    )


def _check_runs(jobs: list[Job], rows: list[Row]) -> list[str]:
    """Each job's runs against its final record; returns the ids that ran more than once.

    At-least-once lets a job run again when the completion of its run never
    reached Redis (the handler finished during the outage, its lease expired
    before the acknowledgement could be sent): that run is then a new claim,
    a new attempt. What must never happen is a run after Redis accepted a
    completion, or a completion accepted from any attempt but the last."""
    lines: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for index, (what, job_id, attempt, _) in enumerate(rows):
        lines[job_id].append((index, what, attempt))
    assert set(lines) == {job.id for job in jobs}, "the jobs in runs.log are not the enqueued ones"
    ran_again = []
    for job in jobs:
        mine = lines[job.id]
        starts = [attempt for _, what, attempt in mine if what == "start"]
        finishes = [attempt for _, what, attempt in mine if what == "finish"]
        acks = [(index, attempt) for index, what, attempt in mine if what == "acked"]
        context = f"job {job.id}: final attempts={job.attempts}, runs.log lines {mine}"
        assert job.state is JobState.COMPLETED, context
        assert len(set(starts)) == len(starts), f"one attempt ran twice; {context}"
        assert starts and max(starts) == job.attempts, context
        assert job.attempts in finishes, context
        # The stored result is the one of the last attempt (fencing).
        assert job.result is not None and job.result["attempt"] == job.attempts, context
        assert len(acks) <= 1, f"completion accepted twice; {context}"
        if acks:
            acked_at, acked_attempt = acks[0]
            assert acked_attempt == job.attempts, context
            assert all(index < acked_at for index, what, _ in mine if what == "start"), (
                f"ran again after its completion was accepted; {context}"
            )
        if job.attempts == 1:
            assert starts == [1] and finishes == [1], context
        if len(starts) > 1:
            ran_again.append(job.id)
    return ran_again


def test_workers_ride_out_a_redis_restart(
    own_redis: RedisServer,
    jobs_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    producer_for: Callable[[str], Conveyor],
) -> None:
    url = f"{own_redis.url}?prefix=restart"
    producer = producer_for(url)
    log = jobs_dir / "runs.log"
    enqueued = producer.enqueue_many_sync(
        [("crash.quick", {"n": n, "seconds": 0.05}) for n in range(JOBS)]
    )
    # A short lease: what the workers held during the outage is recovered fast.
    args = ("--lease", "2", "--concurrency", str(CONCURRENCY), "--shutdown-timeout", "5")
    workers = [start_worker(url, *args) for _ in range(WORKERS)]

    eventually(lambda: _count(log, "finish") >= 60, "60 jobs to finish before the outage")
    down_at = time.monotonic()
    own_redis.stop()
    finished_before = _count(log, "finish")
    assert finished_before < JOBS, "the jobs were all done before Redis went away"
    for worker in workers:
        eventually(
            lambda w=worker: _unreachable(own_redis).search(w.output()),
            f"worker {worker.pid} to log that Redis is unreachable",
            timeout=10,
        )
    # Down for about 1.5 s in all: long enough for acknowledgements, claims
    # and heartbeats to fail, shorter than the lease of 2 s.
    time.sleep(max(0.0, 1.5 - (time.monotonic() - down_at)))
    own_redis.start()
    assert "DB loaded from append only file" in own_redis.log(), own_redis.log()

    for worker in workers:
        eventually(
            lambda w=worker: _reachable(own_redis).search(w.output()),
            f"worker {worker.pid} to log that Redis is reachable again",
            timeout=15,
        )
    eventually(
        lambda: _stats(producer).get("completed") == JOBS,
        f"all {JOBS} jobs to complete after the restart",
        timeout=30,
    )
    for worker in workers:
        assert worker.proc.poll() is None, f"worker {worker.pid} died:\n{worker.output()}"
        out = worker.output()
        # The last word on Redis is that it is reachable again.
        last_down = max(m.start() for m in _unreachable(own_redis).finditer(out))
        last_up = max(m.start() for m in _reachable(own_redis).finditer(out))
        assert last_down < last_up, out
        assert "Traceback" not in out, out
        # One ERROR line per outage (the Redis client's), not one per call
        # of each of the worker's loops.
        errors = [line for line in out.splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors

    assert _stats(producer) == {
        "scheduled": 0,
        "queued": 0,
        "running": 0,
        "completed": JOBS,
        "failed": 0,
        "cancelled": 0,
    }
    final = [producer.get_job_sync(job.id) for job in enqueued]
    jobs = [job for job in final if job is not None]
    assert len(jobs) == JOBS
    ran_again = _check_runs(jobs, _rows(log))
    # Only a job that was running when Redis went away may run again (no
    # prefetch, and nothing is claimed while Redis is down).
    assert len(ran_again) <= WORKERS * CONCURRENCY, ran_again

    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait() == 0, worker.output()


# --------------------------------------------------------------------------- 3. producer


def test_producer_sees_the_outage_and_recovers_without_a_new_app(
    own_redis: RedisServer, producer_for: Callable[[str], Conveyor]
) -> None:
    url = f"{own_redis.url}?prefix=producer"
    app = producer_for(url)
    before = app.enqueue_sync("crash.quick", {"n": 1})

    own_redis.stop()
    # Down for a moment already (the app's idle connection saw it close): a
    # call in flight at that very instant is the next test.
    time.sleep(0.2)
    with pytest.raises(BackendUnavailableError) as raised:
        app.enqueue_sync("crash.quick", {"n": 2})
    message = str(raised.value)
    assert "\n" not in message, message
    assert f"127.0.0.1:{own_redis.port}" in message, message
    # Reading fails the same clear way, and nothing hangs.
    with pytest.raises(BackendUnavailableError, match=rf"127\.0\.0\.1:{own_redis.port}"):
        app.get_job_sync(before.id)

    own_redis.start()
    after = app.enqueue_sync("crash.quick", {"n": 3})  # the same app, no reopening
    kept = app.get_job_sync(before.id)
    assert kept is not None and kept.state is JobState.QUEUED  # the AOF kept it
    assert _stats(app)["queued"] == 2
    assert {job.id for job in app.list_jobs_sync(limit=10)} == {before.id, after.id}


def test_a_demoted_server_is_an_outage_and_is_connected_to_again(
    own_redis: RedisServer, producer_for: Callable[[str], Conveyor]
) -> None:
    """A server that answers but cannot serve (a primary demoted to a replica
    behind a DNS name that now points at the new primary: READONLY) is an
    outage, BackendUnavailableError, and its connection is dropped, so the
    next call connects afresh (to whatever the name points at now) rather
    than stay on it for good."""
    url = f"{own_redis.url}?prefix=unable"
    app = producer_for(url)
    app.enqueue_sync("crash.quick", {"n": 1})
    before = _client_ids(own_redis)
    own_redis.command("REPLICAOF", "127.0.0.1", str(free_port()))  # of a gone primary
    try:
        with pytest.raises(BackendUnavailableError, match="READONLY"):
            app.enqueue_sync("crash.quick", {"n": 2})
    finally:
        own_redis.command("REPLICAOF", "NO", "ONE")
    app.enqueue_sync("crash.quick", {"n": 3})
    assert before and before.isdisjoint(_client_ids(own_redis)), "the connection was kept"
    assert _stats(app)["queued"] == 2


def _client_ids(server: RedisServer) -> set[str]:
    """The ids of the server's client connections, but the one asking."""
    listing = server.command("CLIENT", "LIST")
    return {
        line.split("id=", 1)[1].split(" ", 1)[0]
        for line in listing.splitlines()
        if "id=" in line and "cmd=client|list" not in line
    }


def test_producer_call_cut_off_by_the_outage_names_the_server(
    own_redis: RedisServer, producer_for: Callable[[str], Conveyor]
) -> None:
    url = f"{own_redis.url}?prefix=cutoff"
    app = producer_for(url)
    before = app.enqueue_sync("crash.quick", {"n": 1})

    # Hold writes, so the next enqueue is surely in flight when Redis goes away.
    assert own_redis.command("CLIENT", "PAUSE", "20000", "WRITE") == "+OK\r\n"
    with ThreadPoolExecutor(max_workers=1) as pool:
        cut_off = pool.submit(app.enqueue_sync, "crash.quick", {"n": 2})
        eventually(
            lambda: "blocked_clients:1" in own_redis.command("INFO", "clients"),
            "the enqueue to wait on the paused server",
        )
        own_redis.stop()
        error = cut_off.exception(timeout=WAIT)
    assert isinstance(error, BackendUnavailableError), repr(error)
    message = str(error)
    assert "\n" not in message, message

    own_redis.start()
    after = app.enqueue_sync("crash.quick", {"n": 3})  # the same app, no reopening
    # The cut-off enqueue never ran (it was held), so it stored nothing.
    assert {job.id for job in app.list_jobs_sync(limit=10)} == {before.id, after.id}
    assert f"127.0.0.1:{own_redis.port}" in message, message


# ------------------------------------------------------------------------ 4. shutdown, Redis gone

SHUTDOWN_TIMEOUT = 2.0


def _lose_redis_under_a_worker(
    own_redis: RedisServer,
    jobs_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    producer_for: Callable[[str], Conveyor],
    *args: str,
) -> tuple[WorkerProcess, Job]:
    """A worker runs a job; Redis dies under it; the job ends, and its
    completion can no longer be acknowledged."""
    url = f"{own_redis.url}?prefix=gone"
    producer = producer_for(url)
    log = jobs_dir / "runs.log"
    job = producer.enqueue_sync("crash.quick", {"seconds": 1.0})
    worker = start_worker(url, *args)
    eventually(lambda: _count(log, "start", job.id) == 1, "the job to start")
    own_redis.close()  # SIGKILL: unreachable from now on
    eventually(lambda: _count(log, "finish", job.id) == 1, "the job to finish")
    return worker, job


def test_worker_shuts_down_in_bounded_time_with_redis_gone(
    own_redis: RedisServer,
    jobs_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    producer_for: Callable[[str], Conveyor],
) -> None:
    worker, job = _lose_redis_under_a_worker(
        own_redis,
        jobs_dir,
        start_worker,
        producer_for,
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT),
    )
    bound = SHUTDOWN_TIMEOUT + STOP_GRACE + 8  # process start-up and teardown on a slow box
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=bound) == 0, worker.output()
    assert time.monotonic() - sent < bound
    out = worker.output()
    # It says what it could not acknowledge: the job comes back after its lease.
    assert re.search(rf"unacknowledged.*{job.id}", out), out
    assert "Traceback" not in out, out


def test_second_sigterm_ends_a_shutdown_stuck_on_redis_at_once(
    own_redis: RedisServer,
    jobs_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    producer_for: Callable[[str], Conveyor],
) -> None:
    # A shutdown timeout far beyond the test's patience: only the second
    # signal can end this shutdown in time.
    worker, job = _lose_redis_under_a_worker(
        own_redis, jobs_dir, start_worker, producer_for, "--shutdown-timeout", "120"
    )
    worker.signal(signal.SIGTERM)
    eventually(lambda: "SIGTERM received" in worker.output(), "the worker to begin stopping")
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.output()
    assert time.monotonic() - sent < 15
    out = worker.output()
    assert "second SIGTERM" in out, out
    assert re.search(rf"unacknowledged.*{job.id}", out), out
    assert "Traceback" not in out, out
