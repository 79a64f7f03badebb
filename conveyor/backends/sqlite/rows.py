"""Rows of the SQLite backend's tables turned into `Job` records, and the
small helpers that shape rows and log lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from conveyor.backends.base import NewJob
from conveyor.job import Job, JobState, utc

_STATES: Final = {s.value: s for s in JobState}


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
    ) = row
    return Job(
        id=job_id,
        name=name,
        queue=queue,
        payload=json.loads(payload),
        state=_STATES[state],
        attempts=attempts,
        max_retries=max_retries,
        priority=priority,
        key=key,
        result=None if result is None else json.loads(result),
        error=error,
        progress=progress,
        created_at=utc(created_at),
        run_at=utc(run_at),
        started_at=utc(started_at),
        finished_at=utc(finished_at),
        timeout=timeout,
        logs=[] if logs == "[]" else json.loads(logs),
        stalls=stalls,
        cancel_requested=bool(cancel_requested),
        duplicate=duplicate,
    )


def new_job_record(new: NewJob, state: JobState, duplicate: bool = False) -> Job:
    """The record of a job just inserted, built without reading it back."""
    created_at = utc(new.created_at)
    return Job(
        id=new.id,
        name=new.name,
        queue=new.queue,
        payload=json.loads(new.payload),
        state=state,
        max_retries=new.max_retries,
        priority=new.priority,
        key=new.key,
        created_at=created_at,
        # Most jobs run as soon as they are created: one datetime serves both.
        run_at=created_at if new.run_at == new.created_at else utc(new.run_at),
        timeout=new.timeout,
        duplicate=duplicate,
    )


def claim_order(row: Sequence[Any]) -> tuple[int, float, int]:
    # (priority, run_at, seq): RETURNING yields rows in no promised order.
    return (row[6], row[11], row[0])


def logs_json(logs: Sequence[dict[str, Any]]) -> str | None:
    # default=str: a stray datetime in a log field must not fail the whole
    # finish/heartbeat batch it rides in.
    return json.dumps(logs, default=str) if logs else None
