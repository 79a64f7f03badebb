"""Replies of the Redis backend's scripts turned into `Job` and schedule
records, and the batches and options packed into script arguments."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import ClaimToken, LeaseStatus, NewJob, Outcome, Retention
from conveyor.backends.records import new_job, stored_job
from conveyor.backends.stores import ScheduleRecord
from conveyor.job import Job, JobState

FIELDS = (
    "name",
    "queue",
    "payload",
    "state",
    "attempts",
    "max_retries",
    "priority",
    "key",
    "result",
    "error",
    "progress",
    "created_at",
    "run_at",
    "started_at",
    "finished_at",
    "timeout",
    "logs",
    "stalls",
    "cancel_requested",
    "traceback",
    "history",
    "headers",
)
LEASE_STATUS = {0: LeaseStatus.LOST, 1: LeaseStatus.HELD, 2: LeaseStatus.CANCEL}


def float_or_none(value: str | None) -> float | None:
    return float(value) if value else None


def num_arg(value: float | None) -> str:
    """A number as a script argument; None as "" (for a `now`: the server's clock)."""
    return "" if value is None else repr(value)


def row_to_job(values: Sequence[Any], duplicate: bool = False) -> Job:
    (
        job_id,
        name,
        queue,
        payload,
        state,
        attempts,
        max_retries,
        priority,
        key,
        result,
        error,
        progress,
        created_at,
        run_at,
        started_at,
        finished_at,
        timeout,
        logs,
        stalls,
        cancel_requested,
        traceback,
        history,
        headers,
    ) = values
    return stored_job(
        id=job_id,
        name=name,
        queue=queue,
        payload=payload,
        state=state,
        attempts=int(attempts),
        max_retries=int(max_retries),
        priority=int(priority),
        key=key,
        result=result,
        error=error,
        progress=float(progress or 0),
        created_at=float_or_none(created_at),
        run_at=float_or_none(run_at),
        started_at=float_or_none(started_at),
        finished_at=float_or_none(finished_at),
        timeout=float_or_none(timeout),
        logs=logs,
        stalls=int(stalls or 0),
        cancel_requested=cancel_requested == "1",
        duplicate=duplicate,
        traceback=traceback,
        history=history,
        headers=headers,
    )


def new_job_record(new: NewJob, now: float, *, by_server: bool = False) -> Job:
    """The record of a job just stored at `now`, built locally: no read back
    needed. `by_server`: stored by library.lua's insert(), which counts a
    `relative` job's delay from `now` (the server's clock); this computes the
    same times, digit for digit."""
    created_at, run_at = new.created_at, new.run_at
    if by_server and new.relative:
        delay = run_at - created_at
        created_at = now
        run_at = now + delay if delay > 0 else now
    state = JobState.SCHEDULED if run_at > now else JobState.QUEUED
    return new_job(new, state, created_at=created_at, run_at=run_at)


def jobs_json(jobs: Sequence[NewJob]) -> str:
    """A batch as one JSON argument; numbers as text so Lua keeps every digit."""
    return json.dumps(
        [
            (
                new.id,
                new.name,
                new.queue,
                new.payload,
                str(new.priority),
                str(new.max_retries),
                num_arg(new.timeout),
                new.key or "",
                repr(new.created_at),
                repr(new.run_at),
                "1" if new.relative else "",
                new.headers or "",
            )
            for new in jobs
        ],
        separators=(",", ":"),
    )


def outcomes_json(outcomes: Sequence[Outcome]) -> str:
    return json.dumps(
        [
            (
                out.job_id,
                out.token,
                out.kind.value,
                repr(out.at),
                out.result if out.result is not None else "",
                out.error or "",
                num_arg(out.run_at),
                logs_arg(out.logs),
                num_arg(out.progress),
                num_arg(out.retry_in),
                out.traceback or "",
                "1" if out.timed_out else "",
            )
            for out in outcomes
        ],
        separators=(",", ":"),
    )


def claimed(rows: Sequence[Any], token: ClaimToken) -> list[Job]:
    """The records a claim script returned, with the token it leased them under."""
    jobs = [row_to_job(row) for row in rows]
    for job in jobs:
        job.token = token
    return jobs


def new_token(claim_id: str | None) -> ClaimToken:
    # Made here, not in Lua: a script's randomness is not to be relied on.
    return claim_id if claim_id is not None else os.urandom(12).hex()


def pair_of(queue: str, name: str) -> str:
    """library.lua's pair(): Lua's # counts bytes, hence the encoding."""
    return f"{len(queue.encode())}:{queue}:{name}"


def names_arg(names: Sequence[str] | None) -> str:
    """The names argument of the claim scripts: "" for any name."""
    return "" if names is None else json.dumps(list(dict.fromkeys(names)))


def keep_args(retention: Retention) -> tuple[str | int, str | int]:
    keep_completed = "" if retention.keep_completed is None else retention.keep_completed
    keep_failed = "" if retention.keep_failed is None else retention.keep_failed
    return keep_completed, keep_failed


def logs_arg(lines: Sequence[dict[str, Any]]) -> str:
    return json.dumps(lines, default=str) if lines else ""


def schedule_record(raw: dict[str, str]) -> ScheduleRecord:
    return ScheduleRecord(
        name=raw["name"],
        job_name=raw["job_name"],
        payload=raw["payload"],
        cron=raw["cron"] or None,
        every=float_or_none(raw["every"]),
        tz=raw["tz"],
        key=raw["key"] or None,
        enabled=raw["enabled"] == "1",
        next_run=float(raw["next_run"]),
        created_at=float(raw["created_at"]),
        updated_at=float(raw["updated_at"]),
        last_run=float_or_none(raw.get("last_run")),
        last_error=raw.get("last_error") or None,
        catch_up=raw["catch_up"],
        max_catch_up=int(raw["max_catch_up"]),
        misfire_grace=float(raw["misfire_grace"]),
        options=raw["options"],
    )
