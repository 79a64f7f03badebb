"""Jobs as data: the record, its states, per-enqueue options and the errors.

Nothing here does I/O. Backends build `Job` records; the facade and the worker
read them.
"""

from __future__ import annotations

import enum
import functools
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class JobState(enum.StrEnum):
    """Where a job is in its life.

    `scheduled` waits for `run_at` (a delay or a retry's backoff); `queued` is
    due and waits for a worker; `running` is held by a worker's lease;
    `completed`, `failed` (retries exhausted: the dead-letter set) and
    `cancelled` are final.
    """

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
PENDING_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED})


def utc(ts: float | None) -> datetime | None:
    """An epoch timestamp as an aware UTC datetime (backends store floats)."""
    return None if ts is None else _utc(ts)


@functools.lru_cache(maxsize=256)
def _utc(ts: float) -> datetime:
    # The jobs of one batch share their times: each is converted once.
    return datetime.fromtimestamp(ts, UTC)


_last_id_ms = 0
_id_counter = 0
# The random part of job ids, from a generator seeded by the OS: one system
# call per id (os.urandom) was a quarter of enqueue_many's time. A forked
# child seeds its own, or it would repeat its parent's ids.
_id_random = random.Random(os.urandom(16))


def _reseed_ids() -> None:
    global _last_id_ms, _id_counter
    _id_random.seed(os.urandom(16))
    _last_id_ms, _id_counter = 0, 0


os.register_at_fork(after_in_child=_reseed_ids)


def new_job_id() -> str:
    """A unique id that sorts by creation time: 12 hex digits of milliseconds,
    4 of a per-process counter, 8 random. Made client-side so a batch needs no
    round trip to learn its ids."""
    global _last_id_ms, _id_counter
    ms = int(time.time() * 1000)
    if ms == _last_id_ms:
        _id_counter = (_id_counter + 1) & 0xFFFF
    else:
        _last_id_ms, _id_counter = ms, 0
    return f"{ms:012x}{_id_counter:04x}{_id_random.getrandbits(32):08x}"


# The key of the envelope a payload of a job type's version 2 or later is
# stored in: {"__conveyor_version__": 2, "payload": ...}. Version 1 payloads
# are stored bare, as they always were (conveyor/versions.py says why), but
# for an object with this key of its own, which is enveloped as version 1.
VERSION_KEY = "__conveyor_version__"


def opened(stored: dict[str, Any]) -> tuple[Any, int]:
    """The payload and version of a stored payload that has the envelope's
    key; a dict that has it but is not an envelope is a payload of version 1."""
    version = stored[VERSION_KEY]
    if (
        len(stored) == 2
        and "payload" in stored
        and type(version) is int
        and version >= 1  # version 1 only where the payload has the key itself
    ):
        return stored["payload"], version
    return stored, 1


@dataclass(slots=True)
class Job:
    """A snapshot of one job as the backend holds it.

    Timestamps are aware UTC datetimes. `attempts` counts claims, so while a job
    runs it is the current attempt (1-based); a hand-back at shutdown does not
    count. `token` is the claim's fencing token (an opaque value that never
    repeats for the job), set only on the records a claim returns: the worker
    sends it back with everything it says about the job. `duplicate` is True on
    the record returned by an enqueue whose idempotency key already existed.
    """

    id: str
    name: str
    queue: str
    payload: Any
    state: JobState
    attempts: int = 0
    max_retries: int = 3
    priority: int = 0
    key: str | None = None
    result: Any = None
    error: str | None = None
    progress: float = 0.0
    created_at: datetime | None = None
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timeout: float | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    stalls: int = 0
    cancel_requested: bool = False
    duplicate: bool = False
    token: str | None = None
    traceback: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # Carried with the job from its enqueue to every run: the trace context
    # (W3C `traceparent` / `tracestate`) of the enqueue, when tracing is on.
    headers: dict[str, str] = field(default_factory=dict)
    # The version of its job type the job was enqueued with (see versions.py);
    # read from the stored payload's envelope, which this record opens.
    version: int = 1

    def __post_init__(self) -> None:
        payload = self.payload
        if type(payload) is dict and VERSION_KEY in payload:
            self.payload, self.version = opened(payload)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, used by the CLI and the dashboard."""
        return {
            "id": self.id,
            "name": self.name,
            "queue": self.queue,
            "payload": self.payload,
            "state": self.state.value,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "priority": self.priority,
            "key": self.key,
            "result": self.result,
            "error": self.error,
            "progress": self.progress,
            "created_at": _iso(self.created_at),
            "run_at": _iso(self.run_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "timeout": self.timeout,
            "stalls": self.stalls,
            "version": self.version,
            "logs": self.logs,
            "traceback": self.traceback,
            "history": [
                {
                    **entry,
                    "started_at": _iso(entry["started_at"]),
                    "finished_at": _iso(entry["finished_at"]),
                }
                for entry in self.history
            ],
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --------------------------------------------------------------------------- attempts

HISTORY_LIMIT = 20
"""How many attempts `Job.history` keeps (the newest)."""


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended, as `Job.history` records it."""

    COMPLETED = "completed"
    FAILED = "failed"  # for good
    RETRYING = "retrying"  # failed, another attempt follows
    TIMED_OUT = "timed out"  # ran out of its timeout (retried or not: see the state)
    CANCELLED = "cancelled"
    STALLED = "stalled"  # its lease expired: the worker was lost
    HANDED_BACK = "handed back"  # returned unfinished; the attempt did not count


def attempt_entry(
    attempt: int,
    started_at: datetime | None,
    finished_at: datetime | None,
    outcome: str,
    error: str | None,
) -> dict[str, Any]:
    """One entry of `Job.history`."""
    return {
        "attempt": attempt,
        "started_at": started_at,
        "finished_at": finished_at,
        "outcome": outcome,
        "error": error,
    }


# --------------------------------------------------------------------------- errors


class ConveyorError(Exception):
    """Base class of every error conveyor raises on purpose."""


class UnknownJobError(ConveyorError, LookupError):
    """No job type is registered under this name."""


class InvalidPayloadError(ConveyorError, ValueError):
    """The payload does not fit the job type's model, or is not JSON."""


class InvalidOptionError(ConveyorError, ValueError):
    """An enqueue or configuration option is out of range."""


class UnsupportedURLError(ConveyorError, ValueError):
    """The backend URL names a scheme conveyor does not know."""


class BackendUnavailableError(ConveyorError, ConnectionError):
    """The backend cannot be reached or opened."""

    # True when the backend has already logged the outage this error is part
    # of (the Redis backend says "unreachable" once per outage), so that a
    # caller that logs outages too does not say it a second time at ERROR.
    logged: bool = False


class EnqueueFailedError(BackendUnavailableError):
    """Some jobs of an enqueue did not reach the broker; `failed` lists their
    ids. None of those was enqueued; the others were."""

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message)
        self.failed = failed


class BackendMisconfiguredError(ConveyorError):
    """The backend answers, but is set up in a way conveyor cannot work
    through (PostgreSQL behind a pooler in transaction mode, where LISTEN
    never hears a NOTIFY). Not an outage: waiting does not mend it, so a
    worker stops on it, saying why, instead of retrying."""


class NotSupportedError(ConveyorError, NotImplementedError):
    """The backend declared that it cannot do this (see its capabilities)."""


class JobTimeoutError(ConveyorError, TimeoutError):
    """`wait()` ran out of time before the job reached a final state."""


class Permanent(ConveyorError):
    """Raise from a handler to fail the job at once, skipping its retries."""


# Longer spelling for people who prefer exception names to end in Error.
PermanentError = Permanent
