"""PostgreSQL restarted under two running workers, and under a producer.

The test runs a PostgreSQL cluster of its own (initdb into tmp_path, as the
`postgres` user when the tests run as root), so stopping it disturbs no
other test. A fast shutdown cuts every connection, as a failover or a crash
of the server would for its clients; what was committed is kept.

Every handler run leaves lines in runs.log (see test_redis_crash.py, whose
app and checks this reuses): nothing is lost, no completion is accepted
twice or from a stale attempt, only jobs in flight at the outage run again,
and each worker logs the outage once and its end once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from availability import free_port

from conveyor import BackendUnavailableError, Conveyor, JobState

from .helpers import WAIT, WorkerProcess, eventually
from .test_redis_crash import (  # the same app, workers and run checks
    JOB_NAMES,
    _check_runs,
    _count,
    _rows,
    _stats,
    _unavailable,
    jobs_dir,  # noqa: F401 (fixtures)
    start_worker,  # noqa: F401
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

JOBS = 300
CONCURRENCY = 4
WORKERS = 2


class PostgresServer:
    """A PostgreSQL cluster on a free loopback port, trust auth."""

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir, self.workdir = bindir, workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0  # initdb and postgres refuse root
        if self._as_postgres:
            shutil.chown(workdir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.workdir} -c fsync=off"
        )
        log = str(self.workdir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: every client connection is cut, committed work kept."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    found = shutil.which("initdb")
    if found:
        bindirs.insert(0, Path(found).parent)
    bindir = next((d for d in bindirs if (d / "initdb").exists()), None)
    if bindir is None:
        _unavailable("no initdb found; the PostgreSQL restart tests need a server of their own")
    assert bindir is not None
    # Not under pytest's tmp_path: its root-only folders would keep the
    # `postgres` user out when the tests run as root.
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    try:
        server = PostgresServer(bindir, workdir)
        try:
            server.start()
            yield server
        finally:
            server.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def producer_for() -> Iterator[Callable[[str], Conveyor]]:
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


def _down(server: PostgresServer) -> re.Pattern[str]:
    return re.compile(rf" ERROR .*unavailable .*127\.0\.0\.1:{server.port}/postgres unreachable")


_UP = re.compile(r"reachable again after \d+\.\d s")


def test_workers_ride_out_a_postgres_restart(
    own_postgres: PostgresServer,
    jobs_dir: Path,  # noqa: F811
    start_worker: Callable[..., WorkerProcess],  # noqa: F811
    producer_for: Callable[[str], Conveyor],
) -> None:
    url = f"{own_postgres.url}?schema=restart"
    producer = producer_for(url)
    log = jobs_dir / "runs.log"
    enqueued = producer.enqueue_many_sync(
        [("crash.quick", {"n": n, "seconds": 0.05}) for n in range(JOBS)]
    )
    args = ("--lease", "2", "--concurrency", str(CONCURRENCY), "--shutdown-timeout", "5")
    workers = [start_worker(url, *args) for _ in range(WORKERS)]

    eventually(lambda: _count(log, "finish") >= 60, "60 jobs to finish before the outage")
    down_at = time.monotonic()
    own_postgres.stop()
    assert _count(log, "finish") < JOBS, "the jobs were all done before PostgreSQL went away"
    for worker in workers:
        eventually(
            lambda w=worker: _down(own_postgres).search(w.output()),
            f"worker {worker.pid} to log that PostgreSQL is unreachable",
            timeout=15,
        )
    time.sleep(max(0.0, 1.5 - (time.monotonic() - down_at)))
    own_postgres.start()

    for worker in workers:
        eventually(
            lambda w=worker: _UP.search(w.output()),
            f"worker {worker.pid} to log that PostgreSQL is reachable again",
            timeout=20,
        )
    eventually(
        lambda: _stats(producer).get("completed") == JOBS,
        f"all {JOBS} jobs to complete after the restart",
        timeout=60,
    )
    for worker in workers:
        assert worker.proc.poll() is None, f"worker {worker.pid} died:\n{worker.output()}"
        out = worker.output()
        assert "Traceback" not in out, out
        errors = [line for line in out.splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors  # one line per outage, not one per call
        ups = _UP.findall(out)
        assert len(ups) == 1, out
        assert out.index(errors[0]) < out.rindex(ups[0])

    final = [producer.get_job_sync(job.id) for job in enqueued]
    jobs = [job for job in final if job is not None]
    assert len(jobs) == JOBS
    ran_again = _check_runs(jobs, _rows(log))
    assert len(ran_again) <= WORKERS * CONCURRENCY, ran_again

    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait() == 0, worker.output()


def test_producer_sees_the_outage_and_recovers_without_a_new_app(
    own_postgres: PostgresServer, producer_for: Callable[[str], Conveyor]
) -> None:
    app = producer_for(f"{own_postgres.url}?schema=producer")
    before = app.enqueue_sync("crash.quick", {"n": 1})
    own_postgres.stop()
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as raised:
        app.enqueue_sync("crash.quick", {"n": 2})
    assert time.monotonic() - started < WAIT
    message = str(raised.value)
    assert "\n" not in message and f"127.0.0.1:{own_postgres.port}" in message, message

    own_postgres.start()
    after = eventually(
        lambda: _try(lambda: app.enqueue_sync("crash.quick", {"n": 3})),
        "the same app to enqueue again once PostgreSQL is back",
        timeout=20,
    )
    kept = app.get_job_sync(before.id)
    assert kept is not None and kept.state is JobState.QUEUED
    assert {job.id for job in app.list_jobs_sync(limit=10)} == {before.id, after.id}


def _try(call: Callable[[], object]) -> object:
    try:
        return call()
    except BackendUnavailableError:
        return None
