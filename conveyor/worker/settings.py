"""Worker settings: every knob of a worker, and the environment variables
that fill in what code and command-line flags leave out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.durations import is_seconds
from conveyor.job import InvalidOptionError
from conveyor.settings import worker_environment

# The settings in seconds: finite numbers (a NaN lease would reach the
# backend as a lease end no store can hold).
_SECONDS = (
    "lease",
    "heartbeat_interval",
    "recover_interval",
    "shutdown_timeout",
    "poll_interval",
    "pause_check_interval",
    "presence_interval",
    "scheduler_interval",
)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Every knob of a worker. `build()` applies the environment under code."""

    concurrency: int = 10
    # Jobs claimed ahead of free slots, started the moment a slot frees: the
    # next claim's round trip overlaps with running jobs. Prefetched jobs hold
    # a lease like running ones; keep it 0 for long jobs spread over many workers.
    prefetch: int = 0
    queues: tuple[str, ...] | None = None  # None: every queue the app's job types use
    lease: float = 30.0
    heartbeat_interval: float | None = None  # None: min(lease / 3, 1 s)
    recover_interval: float | None = None  # None: min(lease / 2, 5 s)
    max_stalled: int = 1
    shutdown_timeout: float = 30.0
    poll_interval: float = 1.0  # longest idle wait between claims
    # How often the paused queues are read: a pause or resume takes effect
    # within this (see pauses.py).
    pause_check_interval: float = 1.0
    # How often the worker renews its presence record (`app.workers()`):
    # its running jobs are as of the latest renewal.
    presence_interval: float = 5.0
    scheduler: bool = True
    scheduler_interval: float = 1.0  # how often due schedules are looked for
    # Sync handlers still running after their job ended (timed out, cancelled,
    # lost) keep their thread; this many are tolerated before each one takes a
    # slot. None: as many as `concurrency`.
    max_abandoned_threads: int | None = None
    # Burst mode: fire the schedules due once, run what is due, and stop once
    # the served queues have nothing due and nothing runs here (for scripts,
    # CI and `app.drain()`). Jobs due later are left for the next run.
    burst: bool = False

    def __post_init__(self) -> None:
        for name in _SECONDS:
            value = getattr(self, name)
            if value is not None and not is_seconds(value):
                raise InvalidOptionError(
                    f"{name} must be a finite number of seconds, got {value!r}"
                )
        for name in ("heartbeat_interval", "recover_interval", "scheduler_interval"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidOptionError(f"{name} must be > 0 seconds, got {value}")
        if self.concurrency < 1:
            raise InvalidOptionError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.prefetch < 0:
            raise InvalidOptionError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.lease <= 0:
            raise InvalidOptionError(f"lease must be > 0 seconds, got {self.lease}")
        for name in ("pause_check_interval", "presence_interval"):
            if getattr(self, name) <= 0:
                raise InvalidOptionError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_stalled < 0:
            raise InvalidOptionError(f"max_stalled must be >= 0, got {self.max_stalled}")
        if self.shutdown_timeout < 0:
            raise InvalidOptionError("shutdown_timeout must be >= 0")
        if self.max_abandoned_threads is not None and self.max_abandoned_threads < 0:
            raise InvalidOptionError(
                f"max_abandoned_threads must be >= 0, got {self.max_abandoned_threads}"
            )
        if self.heartbeat_interval is not None and self.heartbeat_interval >= self.lease:
            # A renewal after the lease ran out renews nothing: the job would
            # be recovered, and run again, while it still runs.
            raise InvalidOptionError(
                f"heartbeat_interval ({self.heartbeat_interval:g} s) must be shorter than the"
                f" lease ({self.lease:g} s); a third of it leaves room for a slow round trip"
            )
        if self.queues is not None and not all(self.queues):
            raise InvalidOptionError(f"queue names must be non-empty, got {self.queues!r}")

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or min(self.lease / 3, 1.0)

    @property
    def recover_every(self) -> float:
        return self.recover_interval or min(self.lease / 2, 5.0)

    @property
    def abandoned_threads_tolerated(self) -> int:
        if self.max_abandoned_threads is None:
            return self.concurrency
        return self.max_abandoned_threads

    @classmethod
    def build(cls, **given: Any) -> WorkerSettings:
        """Settings from code (`given`, None meaning "not given"), under which the
        environment fills what code left out. The CLI passes its flags here too,
        so flags win over the environment, which wins over defaults."""
        values = {k: v for k, v in given.items() if v is not None}
        values.update(worker_environment(given=values))
        if "queues" in values and values["queues"] is not None:
            values["queues"] = tuple(values["queues"])
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidOptionError(f"unknown worker settings: {', '.join(sorted(unknown))}")
        return cls(**values)
