"""The completion probe that runs inside a worker process.

Every benchmark task calls `hit(t)` and does nothing else. `t == 0.0` marks a
drain job: it bumps an in-process counter, and the job that brings the counter
to the target writes the finish time to a file, once. `t > 0.0` is a latency
job: `t` is the `time.time()` taken by the producer just before its enqueue
call, and the task records `time.time() - t` in a list that is written to a
file once the expected number of samples is in. A daemon thread writes the
counter to a progress file twice a second so that a timed-out run can still
say how far it got. No Redis round trip is added per job.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

STARTED = "started.json"
DRAIN = "drain.json"
LATENCY = "latency.json"
PROGRESS = "progress.json"


def write_json(path: Path, data: Any) -> None:
    """Write atomically (write a temporary file, then rename it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Probe:
    def __init__(self, workdir: Path, drain_target: int, latency_target: int) -> None:
        self.workdir = workdir
        self.drain_target = drain_target
        self.latency_target = latency_target
        self._counter = itertools.count(1)  # next() is atomic under the GIL
        self.done = 0
        self.first_start: float | None = None
        self._latencies: list[float] = []
        self._lock = threading.Lock()  # latency jobs only: 20 ms apart, never contended
        self._progress = threading.Thread(target=self._report, name="probe", daemon=True)

    def worker_started(self) -> None:
        """Call right before handing control to the library's worker loop."""
        write_json(self.workdir / STARTED, {"time": time.time(), "pid": os.getpid()})
        self._progress.start()

    def hit(self, t: float) -> None:
        now = time.time()
        if t == 0.0:
            n = next(self._counter)
            self.done = n
            if n == 1:
                self.first_start = now
            if n == self.drain_target:
                write_json(
                    self.workdir / DRAIN,
                    {"first_start": self.first_start, "last": time.time(), "count": n},
                )
            return
        with self._lock:
            self._latencies.append(now - t)
            if len(self._latencies) == self.latency_target:
                write_json(self.workdir / LATENCY, self._latencies)

    def _report(self) -> None:
        last = (-1, -1)
        while True:
            time.sleep(0.5)
            now = (self.done, len(self._latencies))
            if now != last:
                last = now
                write_json(
                    self.workdir / PROGRESS,
                    {"done": now[0], "latency": now[1], "time": time.time()},
                )


_active: Probe | None = None


def install(probe: Probe) -> Probe:
    global _active
    _active = probe
    return probe


def hit(t: float) -> None:
    """What every benchmark task body calls."""
    assert _active is not None, "the probe is not installed in this process"
    _active.hit(t)
