"""The chaos harness: real worker processes killed (or frozen) at random under load.

`ChaosRun` starts the workers, a producer thread and a loop that every 1-3 s
hits a random worker, in one of three modes:

* SIGKILL: the worker dies at once; a new one is started.
* SIGSTOP: the worker freezes past its lease (another worker takes its jobs
  over) and is resumed with SIGCONT, its claims now stale.
* SIGTERM: the worker shuts down gracefully with a short shutdown timeout,
  handing back what it could not finish; a new one is started.

On SQLite, every other freeze goes to a worker seen holding the database's
write lock (if one is seen within a moment): a random freeze almost never
lands inside a write transaction, and one that does stalls every other
worker's writes, heartbeats included, for as long as it lasts.

The producer keeps a few hundred jobs queued in waves of a few seconds, with
a short gap between two waves where the queue runs dry. The hit that falls
due next is brought forward to the start of a wave, landing just before the
new jobs do: workers are hit while busy, and also while they wait for work
(a claim that the server may complete while the worker is frozen, on Redis).
Afterwards the run lets the queue drain, stops the workers with SIGTERM and
hands the side channel and the final job records to `analyse`.

The side channel and the checks made on it: chaos_checks.py.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from conveyor import Conveyor, Job

from .chaos_checks import CONT, KILL, SIDE_CHANNEL, SPAWN, STOP, TERM
from .helpers import WAIT, WorkerProcess, eventually

APP_MODULE = "chaosjobs"
JOB_NAMES = ("chaos.async", "chaos.sync")

APP_SOURCE = """
import asyncio
import os
import time
from pathlib import Path

from conveyor import Conveyor, JobContext

HERE = Path(__file__).resolve().parent
# Every result is kept (no retention trim): the checks read all of them back.
app = Conveyor(keep_completed=None)  # the URL comes from CONVEYOR_URL
_LOG = os.open(HERE / "chaos.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(what, job, execution):
    claimed_at = job.started_at.timestamp() if job.started_at is not None else 0.0
    fields = (what, job.id, execution, os.getpid(), job.attempts, repr(claimed_at), time.time())
    line = " ".join(map(str, fields)) + "\\n"
    os.write(_LOG, line.encode())  # one write: lines never interleave


def begin(ctx: JobContext) -> str:
    execution = os.urandom(8).hex()
    record("start", ctx.job, execution)
    return execution


def done(ctx: JobContext, execution: str) -> dict:
    record("end", ctx.job, execution)
    return {"execution": execution, "attempt": ctx.attempt, "pid": os.getpid()}


@app.on("job.completed")
def acknowledged(event) -> None:
    # Fired once the backend accepted the completion; a refused one fires nothing.
    record("acked", event.job, (event.job.result or {}).get("execution", "unknown"))


@app.job("chaos.async", timeout=None)
async def run_async(payload: dict, ctx: JobContext) -> dict:
    execution = begin(ctx)
    await asyncio.sleep(payload["seconds"])
    return done(ctx, execution)


@app.job("chaos.sync", timeout=None)
def run_sync(payload: dict, ctx: JobContext) -> dict:
    execution = begin(ctx)
    time.sleep(payload["seconds"])
    return done(ctx, execution)
"""

MODES = {"SIGKILL": KILL, "SIGSTOP": STOP, "SIGTERM": TERM}
# SQLite's WAL write lock: a POSIX lock on this byte of the -shm file, which
# /proc/locks lists with the holder's pid (Linux).
_WAL_WRITE_LOCK_BYTE = "120"


# --------------------------------------------------------------------------- settings


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True, slots=True)
class ChaosSettings:
    """Knobs, each overridable from the environment so a run can be replayed
    (same seed) or stretched (longer, more workers) without editing code."""

    seed: int
    workers: int = 3
    seconds: float = 20.0  # of chaos per run; three runs (modes) per backend
    lease: float = 2.0
    concurrency: int = 4
    backlog: int = 200  # queued jobs the producer keeps
    job_seconds: tuple[float, float] = (0.05, 0.5)
    pause: tuple[float, float] = (1.0, 3.0)  # between two hits
    wave: tuple[float, float] = (4.0, 8.0)  # the producer keeps the backlog this long,
    gap: tuple[float, float] = (0.5, 1.5)  # then lets the queue run dry for this long
    # SIGTERM mode: shorter than most jobs, so some are handed back unfinished.
    term_shutdown_timeout: float = 0.25

    @classmethod
    def from_env(cls) -> ChaosSettings:
        raw_seed = os.environ.get("CONVEYOR_CHAOS_SEED")
        return cls(
            seed=int(raw_seed) if raw_seed else random.SystemRandom().randrange(10**9),
            workers=int(_env_number("CONVEYOR_CHAOS_WORKERS", 3)),
            seconds=_env_number("CONVEYOR_CHAOS_SECONDS", 20.0),
            lease=_env_number("CONVEYOR_CHAOS_LEASE", 2.0),
        )

    @property
    def frozen_for(self) -> tuple[float, float]:
        # Past the lease, and mostly past the next recovery pass of another
        # worker (every lease/2): the frozen worker's jobs are taken over.
        return (self.lease * 1.5, self.lease * 2.25)

    def worker_args(self, hit: str) -> list[str]:
        shutdown_timeout = self.term_shutdown_timeout if hit == TERM else 10.0
        return [
            f"{APP_MODULE}:app",
            "--lease",
            str(self.lease),
            "--concurrency",
            str(self.concurrency),
            # A job hit by two kills in a row is not a fault of the queue: do
            # not fail it for stalling (the default allows one expiry).
            "--max-stalled",
            "1000",
            "--shutdown-timeout",
            str(shutdown_timeout),
            "--no-scheduler",
        ]


# --------------------------------------------------------------------------- the run


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def write_lock_holder(database: Path, pids: set[int]) -> int | None:
    """Which of `pids` holds the SQLite write lock of `database` now, if any."""
    locks = Path("/proc/locks")
    shm = Path(f"{database}-shm")
    try:
        inode = shm.stat().st_ino
        table = locks.read_text()
    except OSError:
        return None
    for line in table.splitlines():
        # "7: POSIX  ADVISORY  WRITE <pid> <major>:<minor>:<inode> <start> <end>";
        # lines with "->" are processes waiting for a lock, not holding it.
        fields = line.split()
        if "->" in fields or len(fields) < 8 or fields[3] != "WRITE":
            continue
        pid, where, start = int(fields[4]), fields[5], fields[6]
        if start == _WAL_WRITE_LOCK_BYTE and where.endswith(f":{inode}") and pid in pids:
            return pid
    return None


class Producer(threading.Thread):
    """Keeps about `backlog` jobs queued, in waves, until stopped. A thread, so
    a backend call that blocks (on a SQLite lock held by a frozen worker, say)
    never delays the kill loop's SIGCONT."""

    def __init__(self, app: Conveyor, settings: ChaosSettings) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.app = app
        self.settings = settings
        self.rng = random.Random(settings.seed + 1)
        self.enqueued: list[str] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        # The handshake at the start of a wave: the producer asks, the kill
        # loop hits a worker (or not) and lets the wave go.
        self.wave_due = threading.Event()
        self.wave_go = threading.Event()

    def waiting(self) -> int:
        counts = self.app.stats_sync().get("default", {})
        return counts.get("queued", 0) + counts.get("scheduled", 0)

    def top_up(self) -> None:
        missing = self.settings.backlog - self.waiting()
        if missing <= 0:
            return
        batch = [
            (self.rng.choice(JOB_NAMES), {"seconds": self.rng.uniform(*self.settings.job_seconds)})
            for _ in range(missing)
        ]
        self.enqueued += [job.id for job in self.app.enqueue_many_sync(batch)]

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                # The workers are idle: every wave, the first one included,
                # starts with a hit.
                self.wave_due.set()
                self.wave_go.wait(WAIT)
                self.wave_go.clear()
                wave_ends = time.monotonic() + self.rng.uniform(*self.settings.wave)
                while time.monotonic() < wave_ends and not self.stopping.is_set():
                    self.top_up()
                    self.stopping.wait(0.2)
                while self.waiting() and not self.stopping.is_set():
                    self.stopping.wait(0.1)
                self.stopping.wait(self.rng.uniform(*self.settings.gap))
        except BaseException as exc:  # reported by the test, never lost in a thread
            self.error = exc


class ChaosRun:
    """One run: the workers, the producer, the hits, and what they left."""

    def __init__(
        self, settings: ChaosSettings, mode: str, workdir: Path, url: str, producer: Conveyor
    ) -> None:
        self.settings = settings
        self.hit = MODES[mode]
        self.workdir = workdir
        self.url = url
        self.producer = Producer(producer, settings)
        self.rng = random.Random(settings.seed)
        self.log_path = workdir / SIDE_CHANNEL
        self._log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.started: list[WorkerProcess] = []  # every one, for the reaper
        self.workers: list[WorkerProcess] = []  # the current ones
        self.leaving: dict[int, tuple[WorkerProcess, float]] = {}  # SIGTERMed: pid -> deadline
        self.frozen: dict[int, float] = {}  # pid -> monotonic time to resume
        self.ready: set[int] = set()  # pids whose worker has logged that it started
        self.complaints: list[str] = []
        self.database = sqlite_path(url) if self.hit == STOP else None
        self.locked_stops = 0  # freezes that caught a worker holding the write lock

    # ---------------------------------------------------------------- workers

    def note(self, kind: str, pid: int) -> None:
        os.write(self._log, f"{kind} {pid} {time.time():.6f}\n".encode())

    def spawn(self) -> WorkerProcess:
        args = self.settings.worker_args(self.hit)
        worker = WorkerProcess(self.workdir, self.url, args, f"worker{len(self.started)}")
        self.started.append(worker)
        self.note(SPAWN, worker.pid)
        return worker

    def is_ready(self, worker: WorkerProcess) -> bool:
        """Whether it has started (a SIGTERM before that just ends the
        interpreter, which has nothing to hand back yet)."""
        if worker.pid not in self.ready and " started: " in worker.output():
            self.ready.add(worker.pid)
        return worker.pid in self.ready

    def choose(self, awake: list[int]) -> int:
        """The index of the worker to hit: random, or on SQLite every other
        time the first one seen holding the write lock within 0.3 s."""
        pick = self.rng.choice(awake)
        if self.database is None or self.rng.random() < 0.5:
            return pick
        by_pid = {self.workers[i].pid: i for i in awake}
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            holder = write_lock_holder(self.database, set(by_pid))
            if holder is not None:
                return by_pid[holder]
            time.sleep(0.0005)  # transactions last about a millisecond
        return pick

    def strike(self, index: int) -> None:
        worker = self.workers[index]
        self.note(self.hit, worker.pid)
        if self.hit == KILL:
            worker.signal(signal.SIGKILL)
            worker.wait()
            self.workers[index] = self.spawn()
        elif self.hit == TERM:
            worker.signal(signal.SIGTERM)
            self.leaving[worker.pid] = (worker, time.monotonic() + WAIT)
            self.workers[index] = self.spawn()
        else:
            worker.signal(signal.SIGSTOP)
            self.frozen[worker.pid] = time.monotonic() + self.rng.uniform(*self.settings.frozen_for)
            if self.database is not None:
                # Whether it froze with the lock held (a stopped process holds it).
                holder = write_lock_holder(self.database, {worker.pid})
                self.locked_stops += holder is not None

    def resume(self, pid: int) -> None:
        del self.frozen[pid]
        self.note(CONT, pid)
        os.kill(pid, signal.SIGCONT)

    def complain(self, worker: WorkerProcess, what: str) -> None:
        tail = "\n".join(worker.output().splitlines()[-20:])
        self.complaints.append(f"worker {worker.pid} {what}:\n{tail}")

    def check_workers(self) -> None:
        """A worker that exits on its own is a finding (a new one takes its
        place), and so is one that does not exit cleanly soon after SIGTERM."""
        for index, worker in enumerate(self.workers):
            code = worker.proc.poll()
            if code is not None:
                self.complain(worker, f"exited by itself ({code})")
                self.workers[index] = self.spawn()
        for pid, (worker, deadline) in list(self.leaving.items()):
            code = worker.proc.poll()
            if code is None and time.monotonic() < deadline:
                continue
            del self.leaving[pid]
            if code is None:
                self.complain(worker, f"still running {WAIT:g} s after SIGTERM")
                worker.signal(signal.SIGKILL)
            elif code != 0:
                self.complain(worker, f"exited with {code} on SIGTERM")

    # ---------------------------------------------------------------- phases

    def run(self) -> None:
        self.workers = [self.spawn() for _ in range(self.settings.workers)]
        for worker in self.workers:
            # Generous: three interpreters importing and opening at once on a
            # busy CI machine (once seen past 20 s, not reproduced since).
            eventually(partial(self.is_ready, worker), f"worker {worker.pid} to start", 60)
        self.producer.start()
        deadline = time.monotonic() + self.settings.seconds
        next_hit = time.monotonic() + self.rng.uniform(*self.settings.pause)
        while (now := time.monotonic()) < deadline and self.producer.error is None:
            for pid, resume_at in list(self.frozen.items()):
                if now >= resume_at:
                    self.resume(pid)
            self.check_workers()
            wave = self.producer.wave_due.is_set()
            if wave:
                self.producer.wave_due.clear()
                next_hit = now
            if now >= next_hit:
                awake = [i for i, w in enumerate(self.workers) if w.pid not in self.frozen]
                ready = [i for i in awake if self.is_ready(self.workers[i])]
                # Keep one worker awake: the point is recovery by the others.
                if ready and (len(awake) > 1 or self.hit != STOP):
                    self.strike(self.choose(ready))
                    next_hit = now + self.rng.uniform(*self.settings.pause)
                else:
                    next_hit = now + 0.1
            if wave:
                self.producer.wave_go.set()
            time.sleep(0.02)  # the pace of the kill loop, not a wait for a condition
        for pid in list(self.frozen):
            self.resume(pid)
        self.producer.stopping.set()
        self.producer.wave_go.set()
        self.producer.join(timeout=WAIT)

    def drained(self) -> bool:
        counts = self.producer.app.stats_sync().get("default", {})
        waiting = sum(counts.get(state, 0) for state in ("scheduled", "queued", "running"))
        done = sum(counts.get(state, 0) for state in ("completed", "failed", "cancelled"))
        return waiting == 0 and done >= len(self.producer.enqueued)

    def wait_drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() > deadline:
                return False
            self.check_workers()
            time.sleep(0.1)
        return True

    def stop_workers(self) -> None:
        """SIGTERM every worker; complain of those that do not exit cleanly."""
        for worker in self.workers:
            # One spawned after the last hit may still be importing: a SIGTERM
            # then ends the interpreter (-15) before its handler is set, which
            # says nothing about shutdown (seen in CI on a busy machine).
            eventually(partial(self.is_ready, worker), f"worker {worker.pid} to start", 60)
            worker.signal(signal.SIGTERM)
            self.leaving[worker.pid] = (worker, time.monotonic() + WAIT)
        self.workers = []
        while self.leaving:
            self.check_workers()
            time.sleep(0.05)

    def final_records(self) -> dict[str, Job]:
        records = {}
        for job_id in self.producer.enqueued:
            job = self.producer.app.get_job_sync(job_id)
            if job is not None:
                records[job_id] = job
        return records

    def worker_lines(self, job_id: str) -> list[str]:
        """What the workers logged about a job (lease lost, expired...)."""
        out = []
        for worker in self.started:
            lines = worker.output().splitlines()
            out += [f"  [{worker.pid}] {line}" for line in lines if job_id in line]
        return out

    def close(self) -> None:
        for pid in list(self.frozen):
            self.resume(pid)
        self.producer.stopping.set()
        for worker in self.started:
            worker.close()
        os.close(self._log)
