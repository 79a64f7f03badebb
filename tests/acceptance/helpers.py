"""Helpers for the acceptance tests: run the CLI in-process or as real processes.

Waiting is always polling with a generous deadline, never a fixed sleep, so a
slow machine makes a test slower, not red.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from conveyor.cli import cli

WAIT = 20.0


def invoke(*args: str, input: str | None = None) -> Result:
    """Run `conveyor ARGS` in this process (click's CliRunner)."""
    return CliRunner().invoke(cli, list(args), input=input, prog_name="conveyor")


def error_line(stderr: str) -> str:
    """The single line an error prints; fails if there is more, or a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def conveyor_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "conveyor", *args]


def run_conveyor(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        conveyor_command(*args),
        cwd=cwd,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class WorkerProcess:
    """`python -m conveyor worker ...` as a child process, output kept in a file
    (a pipe nobody reads could fill up and block the worker)."""

    def __init__(self, cwd: Path, url: str, args: Sequence[str], name: str) -> None:
        self.log_path = cwd / f"{name}.out"
        env = dict(os.environ, CONVEYOR_URL=url, PYTHONUNBUFFERED="1")
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            conveyor_command("worker", *args),
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout} s:\n{self.output()}"
            ) from None

    def close(self) -> None:
        """Kill it if still running, and reap it (no zombie, no ResourceWarning)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        self._log.close()


def starts(log: Path) -> list[tuple[str, int, int]]:
    """The `job_id attempt pid` lines the test app writes when a handler starts."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        job_id, attempt, pid = line.split()
        rows.append((job_id, int(attempt), int(pid)))
    return rows


# The app the worker processes run. Each handler appends `job_id attempt pid`
# to starts.log next to this file when it starts (one short O_APPEND write, so
# lines from concurrent handlers do not interleave).
APP_SOURCE = """
import asyncio
import os
import time
from pathlib import Path

from conveyor import Conveyor, JobContext

HERE = Path(__file__).resolve().parent
app = Conveyor()  # the URL comes from CONVEYOR_URL


def record(ctx: JobContext) -> None:
    with open(HERE / "starts.log", "a") as log:
        log.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\\n")


def hurry() -> bool:
    return (HERE / "hurry").exists()


@app.job("crash.slow", timeout=None)
async def crash_slow(payload: dict, ctx: JobContext) -> dict:
    record(ctx)
    if ctx.attempt == 1:
        await asyncio.sleep(120)  # the test kills the worker during this
    return {"attempt": ctx.attempt}


@app.job("crash.quick")
async def crash_quick(payload: dict, ctx: JobContext) -> dict:
    record(ctx)
    return payload


@app.job("sleepy", timeout=None)
async def sleepy(payload: dict, ctx: JobContext) -> str:
    record(ctx)
    if hurry():
        return "hurried"
    await asyncio.sleep(payload["seconds"])
    return "slept"


@app.job("sleepy.sync", timeout=None)
def sleepy_sync(payload: dict, ctx: JobContext) -> str:
    record(ctx)
    if hurry():
        return "hurried"
    time.sleep(payload["seconds"])  # ignores ctx.is_cancelled() on purpose
    return "slept"
"""

JOB_NAMES = ("crash.slow", "crash.quick", "sleepy", "sleepy.sync")


def run_until_stopped(
    workers: Sequence[WorkerProcess], started: Callable[[], Any], what: str, seconds: float
) -> tuple[float, str]:
    """Once `started()` is true, let the workers run `seconds` more, SIGTERM
    them all and check they exit 0; the time they were told to stop, and
    their output. Each worker is reaped whatever happens."""
    try:
        eventually(started, what)
        time.sleep(seconds)
        stopped = time.time()
        for worker in workers:
            worker.signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait() == 0, worker.output()
    finally:
        for worker in workers:
            worker.close()
    return stopped, "\n".join(w.log_path.read_text() for w in workers)
