"""Real processes sharing one store: recurring schedules fire exactly once per
tick across three `conveyor worker` processes with the scheduler on, and a
lock excludes concurrent critical sections across processes.

Each process appends one short line per event to a file with O_APPEND (one
write per line, so lines from different processes never interleave).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, JobState

from .helpers import WAIT, WorkerProcess, eventually, run_until_stopped

pytestmark = pytest.mark.slow

BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]

# Several schedules (and a slow tick listener), so that each scheduler pass
# takes a while and the passes of different processes overlap: their
# compare-and-sets really race.
SCHEDULES = [f"every-second-{n}" for n in range(16)]
JOB = "tick.record"

# The app the worker processes run: the job records its idempotency key (which
# names the schedule's tick), and each scheduler.tick event (emitted only by
# the scheduler whose compare-and-set won the tick) records the ticks fired.
SCHEDULER_APP = """
import os
import time
from pathlib import Path

from conveyor import Conveyor, Event, JobContext

HERE = Path(__file__).resolve().parent
app = Conveyor()  # the URL comes from CONVEYOR_URL


def append(name: str, line: str) -> None:
    fd = os.open(HERE / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


@app.job("tick.record", timeout=None)
async def record(payload: dict, ctx: JobContext) -> None:
    append("runs.log", f"{ctx.job.key} {ctx.job_id} {os.getpid()}")


@app.on("scheduler.tick")
def fired(event: Event) -> None:
    ticks = ",".join(f"{t.timestamp():.3f}" for t in event.data["ticks"])
    append("fired.log", f"{event.data['schedule']} {ticks or '-'} {os.getpid()}")
    # A slow listener (it blocks the scheduler's loop) stretches each pass, so
    # the passes of the three processes overlap and their fires really race.
    time.sleep(0.01)
"""


def read_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(params=BACKENDS)
def shared_url(request: pytest.FixtureRequest) -> str:
    """One fresh store URL (a SQLite file in tmp_path, or a Redis prefix) that
    the processes share. Redis skips when no server can be had, except under
    CI, where it fails (the `redis_urls` fixture decides)."""
    maker: Callable[[], str] = request.getfixturevalue(f"{request.param}_urls")
    return maker()


@pytest.fixture
def admin(shared_url: str) -> Iterator[Conveyor]:
    """An app in the test process (the handlers run in the worker processes)."""
    app = Conveyor(shared_url)
    app.job(JOB, timeout=None)(lambda payload: None)
    yield app
    app.close_sync()


def test_each_tick_fires_exactly_once_across_three_worker_processes(
    tmp_path: Path, shared_url: str, admin: Conveyor
) -> None:
    (tmp_path / "schedapp.py").write_text(SCHEDULER_APP)
    anchors: dict[str, float] = {}
    for name in SCHEDULES:
        made = admin.recurring_sync(name, JOB, {"schedule": name}, every=1)
        assert made.next_run is not None
        anchors[name] = made.next_run.timestamp()

    workers = [
        WorkerProcess(tmp_path, shared_url, ["schedapp:app", "--scheduler"], f"sched{n}")
        for n in range(3)
    ]
    fired_log = tmp_path / "fired.log"
    stopped, outputs = run_until_stopped(
        workers, lambda: read_lines(fired_log), "the first scheduler tick", 4.5
    )
    assert "Traceback" not in outputs, outputs
    fired = read_lines(fired_log)
    assert {row[0] for row in fired} <= set(SCHEDULES), fired
    jobs = admin.list_jobs_sync(name=JOB, queue="default", limit=10_000)
    job_keys = Counter(job.key for job in jobs)
    for name in SCHEDULES:
        ticks = Counter(
            float(t) for row in fired if row[0] == name and row[1] != "-" for t in row[1].split(",")
        )
        # Exactly once: no tick of this schedule was fired by two schedulers.
        assert ticks and max(ticks.values()) == 1, (name, sorted(ticks.items()))
        # Every tick is on the schedule's own one-second grid.
        for tick in ticks:
            offset = tick - anchors[name]
            assert abs(offset - round(offset)) < 0.002, (name, tick, anchors[name])
        # About one per second from the first fired tick until the workers
        # stopped (the first may stand for ticks missed while they started).
        expected = math.floor(stopped - min(ticks)) + 1
        complaints = [
            line for line in outputs.splitlines() if " ERROR " in line or " WARNING " in line
        ]
        assert abs(len(ticks) - expected) <= 1, (
            name,
            len(ticks),
            expected,
            sorted(ticks),
            complaints,
        )
        # One job per fired tick, keyed by the tick. The log's ticks went
        # through a datetime (microseconds), so match them to the keys' three
        # decimals with a tolerance rather than by formatting them again.
        key_ticks = [
            float(key.rsplit(":", 1)[1]) for key in job_keys if key.startswith(f"recurring:{name}:")
        ]
        assert all(job_keys[f"recurring:{name}:{t:.3f}"] == 1 for t in key_ticks)
        assert len(key_ticks) == len(ticks), (name, sorted(key_ticks), sorted(ticks))
        for tick in ticks:
            assert any(abs(tick - k) < 0.002 for k in key_ticks), (name, tick, sorted(key_ticks))
    assert sum(job_keys.values()) == len(jobs)
    assert all(job.payload["schedule"] in SCHEDULES for job in jobs)
    assert all(job.key.startswith(f"recurring:{job.payload['schedule']}:") for job in jobs)
    total_ticks = sum(len(row[1].split(",")) for row in fired if row[1] != "-")
    assert len(jobs) == total_ticks

    # Each job ran at most once (nothing crashed, so nothing was redelivered),
    # nearly all of them before the workers stopped.
    runs = read_lines(tmp_path / "runs.log")
    ran = Counter(row[1] for row in runs)
    assert max(ran.values()) == 1, ran
    assert set(ran) <= {job.id for job in jobs}
    assert len(ran) >= len(jobs) - 2 * len(SCHEDULES), (len(ran), len(jobs))
    for shown in admin.list_recurring_sync():
        assert shown.last_error is None, shown


# --------------------------------------------------------------------------- locks

LOCK_SCRIPT = """
import os
import sys
import time
from pathlib import Path

from conveyor import Conveyor

url, rounds, out, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
pid = os.getpid()
app = Conveyor(url)


def append(what: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {pid}\\n".encode())
    finally:
        os.close(fd)


# Open the store before the start signal, so all processes contend at once.
app.locks.release_sync("warm-up", "none")
(out.parent / f"ready-{pid}").touch()
while not go.exists():
    time.sleep(0.005)

deadline = time.monotonic() + 60
done = misses = 0
while done < rounds:
    token = app.locks.acquire_sync("k", ttl=5, wait=5)
    if token is None:  # starved for 5 s by the others: try again
        misses += 1
        if time.monotonic() > deadline:
            sys.exit(f"gave up after {done} rounds and {misses} misses")
        continue
    append("enter")
    time.sleep(0.01)
    append("exit")
    if not app.locks.release_sync("k", token):
        sys.exit("the lock was lost inside the critical section")
    done += 1
    time.sleep(0.002)  # give the others a chance
app.close_sync()
print(f"{pid} done, {misses} misses")
"""


def test_a_lock_excludes_critical_sections_across_processes(
    tmp_path: Path, shared_url: str
) -> None:
    script = tmp_path / "lockrun.py"
    script.write_text(LOCK_SCRIPT)
    log, go = tmp_path / "sections.log", tmp_path / "go"
    processes, rounds = 4, 12
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    children = [
        subprocess.Popen(
            [sys.executable, str(script), shared_url, str(rounds), str(log), str(go)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        eventually(
            lambda: (
                len(list(tmp_path.glob("ready-*"))) == processes
                or any(c.poll() is not None for c in children)
            ),
            "the lock processes to be ready",
        )
        go.touch()
        outputs = [child.communicate(timeout=WAIT * 3)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    for child, output in zip(children, outputs, strict=True):
        assert child.returncode == 0, output

    rows = read_lines(log)
    assert len(rows) == 2 * processes * rounds
    # Strict alternation: every enter is followed by the same process's exit.
    for n in range(0, len(rows), 2):
        (what, pid), (then, other) = rows[n], rows[n + 1]
        assert (what, then, other) == ("enter", "exit", pid), rows[max(0, n - 4) : n + 4]
    per_process = Counter(pid for what, pid in rows if what == "enter")
    assert sorted(per_process.values()) == [rounds] * processes
    assert set(per_process) == {str(child.pid) for child in children}


# ------------------------------------------------------------ a scheduler without the job type

# Two apps: one with the job's handler (its worker runs the jobs, its scheduler
# off), one without any job type (its worker only runs the scheduler).
HANDLER_APP = """
import os
from pathlib import Path

from conveyor import Conveyor, JobContext

HERE = Path(__file__).resolve().parent
app = Conveyor()  # the URL comes from CONVEYOR_URL


@app.job("tick.record", queue="ticks", timeout=None)
async def record(payload: dict, ctx: JobContext) -> None:
    fd = os.open(HERE / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.job_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
"""
BLIND_APP = """
from conveyor import Conveyor

app = Conveyor()  # registers no job type at all
"""


def test_a_scheduler_process_without_the_job_type_fires_a_job_per_tick(
    tmp_path: Path, shared_url: str, admin: Conveyor
) -> None:
    (tmp_path / "handlerapp.py").write_text(HANDLER_APP)
    (tmp_path / "blindapp.py").write_text(BLIND_APP)
    # Every tick gets its job ("all"), so a pass that finds two ticks due
    # (passes are a second apart, as are the ticks) fires both.
    made = admin.recurring_sync(
        "every-second", JOB, {"n": 1}, every=1, catch_up="all", queue="ticks", priority=5
    )
    assert made.next_run is not None
    anchor = made.next_run.timestamp()
    runner = WorkerProcess(
        tmp_path, shared_url, ["handlerapp:app", "--no-scheduler", "--queues", "ticks"], "runner"
    )
    blind = WorkerProcess(
        tmp_path, shared_url, ["blindapp:app", "--scheduler", "--queues", "idle"], "blind"
    )

    def fired() -> list[Any]:
        return admin.list_jobs_sync(name=JOB, queue="ticks", limit=1000)

    try:
        eventually(lambda: len(fired()) >= 3, "three ticks fired by the scheduler without the type")
        stopped = time.time()
        blind.signal(signal.SIGTERM)
        assert blind.wait() == 0, blind.output()
        jobs = fired()
        eventually(
            lambda: all(admin.get_job_sync(j.id).state is JobState.COMPLETED for j in jobs),
            "the worker with the handler to run every fired job",
        )
        runner.signal(signal.SIGTERM)
        assert runner.wait() == 0, runner.output()
    finally:
        runner.close()
        blind.close()

    outputs = blind.log_path.read_text() + runner.log_path.read_text()
    assert "Traceback" not in outputs, outputs
    assert "cannot enqueue" not in outputs, outputs
    # One job per tick on the schedule's grid, none skipped, up to about when
    # the scheduler was stopped (its passes are a second apart: allow for one
    # pass and some slack on a slow machine).
    offsets = sorted(float(job.key.rsplit(":", 1)[1]) - anchor for job in jobs)
    assert [round(o) for o in offsets] == list(range(len(offsets))), offsets
    assert all(abs(o - round(o)) < 0.002 for o in offsets), offsets
    due_long_before_stop = math.floor(stopped - 2.5 - anchor) + 1
    assert len(offsets) >= due_long_before_stop, (offsets, stopped - anchor)
    assert {(j.priority, j.payload["n"]) for j in jobs} == {(5, 1)}
    ran = Counter(row[0] for row in read_lines(tmp_path / "runs.log"))
    assert ran == Counter({job.id: 1 for job in jobs})
