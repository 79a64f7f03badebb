"""Rows of the SQLite backend's tables turned into `Job` records, and the
small helpers that shape rows and log lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import NewJob
from conveyor.backends.records import new_job, stored_job
from conveyor.job import Job, JobState


def row_to_job(row: Sequence[Any], duplicate: bool = False) -> Job:
    """A `Job` record from a row selected as `COLS`."""
    (
        _seq,
        job_id,
        name,
        queue,
        payload,
        state,
        priority,
        max_retries,
        timeout,
        key,
        created_at,
        run_at,
        attempts,
        result,
        error,
        progress,
        started_at,
        finished_at,
        stalls,
        cancel_requested,
        logs,
        traceback,
        history,
    ) = row
    return stored_job(
        id=job_id,
        name=name,
        queue=queue,
        payload=payload,
        state=state,
        attempts=attempts,
        max_retries=max_retries,
        priority=priority,
        key=key,
        result=result,
        error=error,
        progress=progress,
        created_at=created_at,
        run_at=run_at,
        started_at=started_at,
        finished_at=finished_at,
        timeout=timeout,
        logs=logs,
        stalls=stalls,
        cancel_requested=bool(cancel_requested),
        duplicate=duplicate,
        traceback=traceback,
        history=history,
    )


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
