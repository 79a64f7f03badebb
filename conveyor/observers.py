"""What the facade and the worker call when tracing is on (conveyor/tracing.py
implements it), so that neither imports OpenTelemetry: `app.tracing` is None
unless `conveyor.tracing.instrument(app)` set it."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from conveyor.backends.base import NewJob, Outcome
from conveyor.job import Job


class RunSpan(Protocol):
    def end(self, outcome: Outcome | None) -> None:
        """The run is over: `outcome` as the worker reports it (None: the
        job is no longer this worker's, or the run was cancelled by others)."""


class JobTracer(Protocol):
    def enqueue(self, jobs: Sequence[NewJob]) -> AbstractContextManager[None]:
        """Around storing `jobs`: a span per job, whose context it writes
        into the job's `headers` before the backend is called."""

    def run(self, job: Job) -> RunSpan:
        """A run of `job` begins (in the task that runs it): a span whose
        parent is the context in `job.headers`, current until `end`."""
