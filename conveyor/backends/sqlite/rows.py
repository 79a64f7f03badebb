"""Rows of the SQLite backend's tables turned into `Job` records, and the
small helpers that shape rows and log lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import NewJob
from conveyor.backends.records import new_job, row_to_job

__all__ = ["claim_order", "logs_json", "new_job_record", "row_to_job"]
from conveyor.job import Job, JobState


def new_job_record(new: NewJob, state: JobState, duplicate: bool = False) -> Job:
    """The record of a job just inserted, built without reading it back."""
    return new_job(new, state, duplicate)


def claim_order(row: Sequence[Any]) -> tuple[int, float, int]:
    # (priority, run_at, seq): RETURNING yields rows in no promised order.
    return (row[6], row[11], row[0])


def logs_json(logs: Sequence[dict[str, Any]]) -> str | None:
    # default=str: a stray datetime in a log field must not fail the whole
    # finish/heartbeat batch it rides in.
    return json.dumps(logs, default=str) if logs else None
