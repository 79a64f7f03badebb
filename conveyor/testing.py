"""A test kit for code that uses conveyor: run jobs, move time, make jobs fail.

* `await app.drain()` (or `app.drain_sync()`) runs every due job to
  completion in your test, through the worker's own code, and returns the
  final record of each job that ran.
* `FakeClock(app)` stops the clock the app's backend decides by, and moves it
  only when you say: delays, retry backoffs and recurring schedules come due
  without sleeping. memory:// and sqlite:// only (see `FakeClock`).
* `fail_next(app, "email.welcome", exc=...)` makes the next attempt of a job
  type fail with `exc`, as if its handler had raised it.

    from conveyor import testing

    async def test_reminder_goes_out_after_a_day(app):
        with testing.FakeClock(app) as clock:
            await app.enqueue("remind", {"to": "a@b.c"}, delay=86400)
            assert await app.drain() == []
            clock.advance(86400)
            [job] = await app.drain()
            assert job.state == "completed"
"""

from __future__ import annotations

import collections
import importlib
import sys
import threading
import time as real_time
import types
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor.backends import scheme_of
from conveyor.job import InvalidOptionError, NotSupportedError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["FakeClock", "fail_next"]

# Backends whose clock is this host's `time.time()`, which the fake clock replaces.
_HOST_CLOCK_SCHEMES = frozenset({"memory", "sqlite"})

# The fake clock reaches the conveyor modules loaded when it starts: these are
# loaded first, as some load lazily (the worker when a drain begins).
_CLOCKED_PACKAGES = (
    "conveyor.app",
    "conveyor.scheduler",
    "conveyor.worker",
    "conveyor.worker.drain",
    "conveyor.backends.memory",
    "conveyor.backends.sqlite",
)

# Modules that keep the real clock: job ids sort by real creation time, and
# the SQLite writer measures how long a write lock is really held (a stall).
_REAL_CLOCK_MODULES = frozenset({"conveyor.job", "conveyor.backends.sqlite.writer"})


class _ClockedTime(types.ModuleType):
    """The `time` module as conveyor's modules see it under a fake clock:
    `time()` is the fake one; everything else (monotonic, sleep) is real, so
    timeouts, leases as the worker reckons them and asyncio run as usual."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__("time")
        self._clock = clock

    def time(self) -> float:
        return self._clock.time()

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


class FakeClock:
    """A stopped clock for the backend of `app`, moved by `advance()` / `set()`.

    While active (`with FakeClock(app) as clock:`, or `start()` / `stop()`),
    every time conveyor reads to decide what is due (enqueue delays, retry
    backoffs, leases, recurring schedules, lock and cache expiry) is this
    clock's, and it moves only when told. Nothing sleeps: a job delayed by a
    day is due the moment you `advance(86400)`, and `app.drain()` runs it.

    It works where the backend decides by this host's clock: memory:// and
    sqlite://. On redis:// (and any backend with a server) the server's clock
    decides, which a test cannot move: `FakeClock` refuses them with
    NotSupportedError. There, give such tests short real delays, or
    `backoff=0` for retries, instead.

    The clock is process-wide (every app on memory:// or sqlite:// in this
    process sees it) and one may be active at a time. Move it between drains,
    not while a job runs: a running job's lease would expire under it.
    Outside conveyor nothing changes (`time.time()`, `datetime.now()`): build
    run_at times from `clock.now()`.
    """

    _active: FakeClock | None = None
    _guard = threading.Lock()

    def __init__(self, app: Conveyor, start: datetime | float | None = None) -> None:
        scheme = scheme_of(app.backend.url)
        if scheme not in _HOST_CLOCK_SCHEMES:
            raise NotSupportedError(
                f"FakeClock moves the host's clock, which the {scheme}:// backend does not "
                "decide by (its server's clock does); use memory:// or sqlite:// for tests "
                "that move time"
            )
        self._now = _epoch(start) if start is not None else real_time.time()
        self._lock = threading.Lock()  # the SQLite connection thread reads it too
        self._patched: list[types.ModuleType] = []

    # ------------------------------------------------------------------ reading

    def time(self) -> float:
        """The fake now, in epoch seconds."""
        with self._lock:
            return self._now

    def now(self) -> datetime:
        """The fake now, as an aware UTC datetime (for `run_at=`)."""
        return datetime.fromtimestamp(self.time(), UTC)

    # ------------------------------------------------------------------ moving

    def advance(self, seconds: float | timedelta) -> float:
        """Move the clock forward; return the new now (epoch seconds)."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not step >= 0:  # also refuses NaN
            raise InvalidOptionError(f"the clock only moves forward, got {seconds!r}")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime | float) -> None:
        """Move the clock to `when` (an aware datetime or epoch seconds), forward only."""
        target = _epoch(when)
        with self._lock:
            if target < self._now:
                raise InvalidOptionError(
                    f"the clock only moves forward: {when!r} is before its now"
                )
            self._now = target

    # ------------------------------------------------------------------ activating

    def start(self) -> FakeClock:
        with FakeClock._guard:
            if FakeClock._active is not None:
                raise InvalidOptionError("a FakeClock is already active in this process")
            FakeClock._active = self
            clocked = _ClockedTime(self)
            for module in _conveyor_modules():
                if getattr(module, "time", None) is real_time:
                    module.time = clocked  # type: ignore[attr-defined]
                    self._patched.append(module)
        return self

    def stop(self) -> None:
        with FakeClock._guard:
            for module in self._patched:
                module.time = real_time  # type: ignore[attr-defined]
            self._patched.clear()
            if FakeClock._active is self:
                FakeClock._active = None

    def __enter__(self) -> FakeClock:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _conveyor_modules() -> list[types.ModuleType]:
    for name in _CLOCKED_PACKAGES:
        importlib.import_module(name)
    return [
        module
        for name, module in list(sys.modules.items())
        if (name == "conveyor" or name.startswith("conveyor."))
        and name not in _REAL_CLOCK_MODULES
        and module is not None
    ]


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise InvalidOptionError(f"give an aware datetime, got {when!r}")
        return when.timestamp()
    return float(when)


# --------------------------------------------------------------------------- failing


def fail_next(
    app: Conveyor,
    name: str,
    exc: BaseException | type[BaseException] | None = None,
    *,
    times: int = 1,
) -> None:
    """Make the next `times` attempts of job type `name` fail with `exc`
    (default: a RuntimeError) before its handler is called, wherever the
    job runs in this process (`app.drain()`, an in-process worker). The
    worker treats it as the handler's own exception: a retry with backoff,
    or a final failure once retries are spent or for `conveyor.Permanent`."""
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise InvalidOptionError(f"times must be an integer >= 1, got {times!r}")
    job_type = app.job_type(name)  # UnknownJobError for a typo
    failures: collections.deque[BaseException | type[BaseException]] | None = getattr(
        job_type, "_fail_next", None
    )
    if failures is None:
        failures = collections.deque()
        lock = threading.Lock()  # sync handlers run on the worker's threads
        call = job_type.call
        queued = failures

        def failing_call(payload: Any, ctx: Any) -> Any:
            with lock:
                planned = queued.popleft() if queued else None
            if planned is not None:
                raise planned() if isinstance(planned, type) else planned
            return call(payload, ctx)

        # The job type's own entry point is wrapped, so the worker's path is
        # unchanged around it: timeouts, retries and events all apply.
        job_type.call = failing_call  # type: ignore[method-assign]
        job_type._fail_next = failures  # type: ignore[attr-defined]
    failures.extend([exc if exc is not None else RuntimeError(f"fail_next({name!r})")] * times)
