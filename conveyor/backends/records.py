"""The one place that turns what a backend stored into `Job` records.

Backends store payloads, results and log lines as JSON text and times as
epoch seconds; each reads its own row shape (a tuple, a Redis hash, a
dataclass) into these keyword arguments, in storage types, and gets the
`Job` back. So JSON is decoded, times become aware UTC datetimes and empty
values become None the same way on every backend, and only once per record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from conveyor.backends.base import ClaimToken, NewJob
from conveyor.backends.stores import STALE_WORKER_KEPT, WorkerInfo
from conveyor.codec import decode_json
from conveyor.job import HISTORY_LIMIT, AttemptOutcome, Job, JobState, attempt_entry, utc

STATES: Final = {s.value: s for s in JobState}


def stored_job(
    *,
    id: str,
    name: str,
    queue: str,
    payload: str,
    state: str | JobState,
    attempts: int,
    max_retries: int,
    priority: int,
    key: str | None,
    result: str | None,
    error: str | None,
    progress: float,
    created_at: float | None,
    run_at: float | None,
    started_at: float | None,
    finished_at: float | None,
    timeout: float | None,
    logs: str | list[dict[str, Any]] | None,
    stalls: int,
    cancel_requested: bool,
    duplicate: bool = False,
    token: ClaimToken | None = None,
    traceback: str | None = None,
    history: str | list[dict[str, Any]] | None = None,
    headers: str | dict[str, str] | None = None,
) -> Job:
    """A `Job` from stored fields: JSON text (`payload`, `result`, `logs`,
    `history`, empty or None meaning none), epoch seconds (None: not set).
    `history` holds stored entries (see `stored_entry`)."""
    if isinstance(logs, str):
        logs = [] if logs in ("", "[]") else decode_json(logs)
    return Job(
        id=id,
        name=name,
        queue=queue,
        payload=decode_json(payload),
        state=state if isinstance(state, JobState) else STATES[state],
        attempts=attempts,
        max_retries=max_retries,
        priority=priority,
        key=key or None,
        result=decode_json(result) if result else None,
        error=error or None,
        progress=progress,
        created_at=utc(created_at),
        run_at=utc(run_at),
        started_at=utc(started_at),
        finished_at=utc(finished_at),
        timeout=timeout,
        logs=list(logs) if logs else [],
        stalls=stalls,
        cancel_requested=cancel_requested,
        duplicate=duplicate,
        token=token,
        traceback=traceback or None,
        history=history_entries(history),
        headers=decode_headers(headers),
    )


def history_entries(history: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`Job.history` from its stored entries (JSON text, or decoded)."""
    if isinstance(history, str):
        history = [] if history in ("", "[]") else decode_json(history)
    return [_entry(stored) for stored in history] if history else []


def decode_headers(headers: str | dict[str, str] | None) -> dict[str, str]:
    """`Job.headers` from its stored JSON text (None or empty: none)."""
    if not headers:
        return {}
    if isinstance(headers, dict):
        return dict(headers)
    found: dict[str, str] = decode_json(headers)
    return found


def row_to_job(row: Sequence[Any], duplicate: bool = False) -> Job:
    """A `Job` record from a row of the SQL backends (SQLite, PostgreSQL)
    selected as their `COLS`, which list the same columns in the same order."""
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
        headers,
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
        headers=headers,
    )


def claim_order(row: Sequence[Any]) -> tuple[int, float, int]:
    """Claim order of a `row_to_job` row: (priority, run_at, seq); an
    UPDATE's RETURNING yields rows in no promised order."""
    return (row[6], row[11], row[0])


def by_ids(ids: Sequence[str], jobs: Iterable[Job]) -> list[Job | None]:
    """One entry per id, in order: its job among `jobs`, else None (a claim
    by ids: the id is missing, was not queued, or came earlier in `ids`)."""
    found = {job.id: job for job in jobs}
    return [found.pop(job_id, None) for job_id in ids]


def logs_json(logs: Sequence[dict[str, Any]]) -> str | None:
    # default=str: a stray datetime in a log field must not fail the whole
    # finish/heartbeat batch it rides in.
    return json.dumps(logs, default=str) if logs else None


def _entry(stored: dict[str, Any]) -> dict[str, Any]:
    return attempt_entry(
        stored["attempt"],
        utc(stored["started_at"]),
        utc(stored["finished_at"]),
        stored["outcome"],
        stored["error"] or None,
    )


# --------------------------------------------------------------------------- history
# Stored, a history is a JSON array of entries in this key order (Redis's
# scripts find entry boundaries by the leading "attempt" key), times as epoch
# seconds; at most HISTORY_LIMIT, oldest first.


def stored_entry(
    attempt: int,
    started_at: float | None,
    finished_at: float | None,
    outcome: AttemptOutcome,
    error: str | None,
) -> dict[str, Any]:
    """One history entry as a backend stores it."""
    return {
        "attempt": attempt,
        "started_at": started_at,
        "finished_at": finished_at,
        "outcome": outcome.value,
        "error": error,
    }


def entry_text(
    attempt: int,
    started_at: float | None,
    finished_at: float | None,
    outcome: AttemptOutcome,
    error: str | None,
) -> str:
    """`json.dumps(stored_entry(...))`, written directly: a backend that keeps
    the history in Python writes an entry as every job ends, and json.dumps
    was a tenth of the worker's time per job there."""
    return (
        f'{{"attempt": {_number(attempt)}, "started_at": {_number(started_at)}, '
        f'"finished_at": {_number(finished_at)}, "outcome": {_text(outcome.value)}, '
        f'"error": {_text(error)}}}'
    )


def _number(value: float | None) -> str:
    if value is None:
        return "null"
    kind = type(value)
    if kind is int or (kind is float and math.isfinite(value)):
        return repr(value)
    # NaN, the infinities, bools, subclasses (an IntEnum): as json.dumps writes them.
    return json.dumps(value)


def _text(value: str | None) -> str:
    if value is None:
        return "null"
    return encode_basestring_ascii(value) if type(value) is str else json.dumps(value)


def with_entry(history: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """`history` with `entry` appended, cut to the newest HISTORY_LIMIT."""
    return [*history[-(HISTORY_LIMIT - 1) :], entry]


def new_job(
    new: NewJob,
    state: JobState,
    duplicate: bool = False,
    *,
    created_at: float | None = None,
    run_at: float | None = None,
    job_id: str | None = None,
) -> Job:
    """The record of a job just stored, built from what was sent: no read
    back. `created_at`/`run_at`: the times the backend stored, where its own
    clock set them instead of the producer's; `job_id`: the id it stored the
    job under, where that is not the one sent."""
    created = new.created_at if created_at is None else created_at
    due = new.run_at if run_at is None else run_at
    created_utc = utc(created)
    return Job(
        id=new.id if job_id is None else job_id,
        name=new.name,
        queue=new.queue,
        payload=decode_json(new.payload),
        state=state,
        max_retries=new.max_retries,
        priority=new.priority,
        key=new.key,
        created_at=created_utc,
        # Most jobs run as soon as they are created: one datetime serves both.
        run_at=created_utc if due == created else utc(due),
        timeout=new.timeout,
        duplicate=duplicate,
        headers=decode_headers(new.headers),
    )


def stored_worker(
    *,
    id: str,
    host: str,
    pid: int,
    queues: Sequence[str],
    names: Sequence[str],
    started_at: float,
    last_seen: float,
    details: dict[str, Any] | None,
) -> WorkerInfo:
    """A worker's presence record from its stored fields; `details` as
    `WorkerInfo.details()` made it (None or {} from an older release's beat)."""
    details = details or {}
    return WorkerInfo(
        id=id,
        host=host,
        pid=int(pid),
        queues=tuple(queues),
        names=tuple(names),
        started_at=float(started_at),
        last_seen=float(last_seen),
        concurrency=int(details.get("concurrency", 0)),
        running=WorkerInfo.running_from(details.get("running", ())),
    )


def present_workers(
    records: Iterable[tuple[WorkerInfo, float]], now: float, include_stale: bool
) -> list[WorkerInfo]:
    """The presence records (each with the time its TTL runs out) that
    `WorkerRegistry.workers` returns at `now`: the live ones and, with
    `include_stale`, those stale for less than STALE_WORKER_KEPT (flagged),
    ordered by (started_at, id)."""
    out = []
    for info, expires in records:
        if expires > now:
            out.append(info)
        elif include_stale and expires + STALE_WORKER_KEPT > now:
            info.stale = True
            out.append(info)
    return sorted(out, key=lambda info: (info.started_at, info.id))
