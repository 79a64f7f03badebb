"""conveyor: background jobs for Python.

One API for a durable job queue over pluggable backends chosen by URL:
memory://, sqlite:///path.db (the default), and more to come.
"""

from __future__ import annotations

from conveyor.app import Conveyor
from conveyor.backoff import Backoff
from conveyor.context import JobContext
from conveyor.discovery import DiscoveryError
from conveyor.events import Event
from conveyor.job import (
    BackendMisconfiguredError,
    BackendUnavailableError,
    ConveyorError,
    EnqueueFailedError,
    InvalidOptionError,
    InvalidPayloadError,
    Job,
    JobState,
    JobTimeoutError,
    NotSupportedError,
    Permanent,
    PermanentError,
    UnknownJobError,
    UnsupportedURLError,
)
from conveyor.registry import JobFailedError, JobType
from conveyor.worker import Worker, WorkerSettings

__version__ = "0.1.0"

__all__ = [
    "BackendMisconfiguredError",
    "BackendUnavailableError",
    "Backoff",
    "Conveyor",
    "ConveyorError",
    "DiscoveryError",
    "EnqueueFailedError",
    "Event",
    "InvalidOptionError",
    "InvalidPayloadError",
    "Job",
    "JobContext",
    "JobFailedError",
    "JobState",
    "JobTimeoutError",
    "JobType",
    "NotSupportedError",
    "Permanent",
    "PermanentError",
    "UnknownJobError",
    "UnsupportedURLError",
    "Worker",
    "WorkerSettings",
    "__version__",
]
