"""Rows of the SQLite backend's tables turned into `Job` records, and the
small helpers that shape rows and log lines."""

from __future__ import annotations

from conveyor.backends.base import NewJob
from conveyor.backends.records import claim_order, logs_json, new_job, row_to_job

__all__ = ["claim_order", "logs_json", "new_job_record", "row_to_job"]
from conveyor.job import Job, JobState


def new_job_record(new: NewJob, state: JobState, duplicate: bool = False) -> Job:
    """The record of a job just inserted, built without reading it back."""
    return new_job(new, state, duplicate)
