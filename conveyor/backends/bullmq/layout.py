"""BullMQ's Redis layout (v5+, unchanged in 6.x) and how a job hash reads
as a conveyor `Job`.

A queue `q` under prefix `bull` keeps: `bull:q:wait` / `paused` / `active`
(lists), `prioritized` / `delayed` / `completed` / `failed` (sorted sets),
`marker` (the sorted set workers block on), `meta` (hash), `events` (the
stream QueueEvents reads), `stalled` (set), `id` (the id counter), and per job
`bull:q:<id>` (hash), `bull:q:<id>:lock` (the lock token) and
`bull:q:<id>:logs` (list).

Fields conveyor adds to a job hash (BullMQ ignores them): `cvcancel` (a
cancel was requested while it ran) and `cvcancelled` (it ended cancelled:
BullMQ has no such state, so it sits in `failed`), `cvhistory` (the
attempts conveyor saw end).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from conveyor.backends.bullmq.url import DEFAULT_QUEUE
from conveyor.backends.records import decode_headers, history_entries
from conveyor.codec import decode_json
from conveyor.job import Job, JobState, utc

CANCEL_REQUESTED: Final = "cvcancel"
CANCELLED: Final = "cvcancelled"
# The job's attempts as conveyor records them (records.py's stored entries, JSON).
HISTORY: Final = "cvhistory"
# A conveyor job's own timeout (seconds) rides in BullMQ's opts, which keep
# keys they do not know; Node's worker ignores it.
TIMEOUT_OPTION: Final = "conveyorTimeout"
# Job.headers (the enqueue's trace context) ride there too.
HEADERS_OPTION: Final = "conveyorHeaders"

SUFFIXES: Final = (
    "wait",
    "paused",
    "active",
    "prioritized",
    "delayed",
    "completed",
    "failed",
    "waiting-children",
    "marker",
    "meta",
    "events",
    "stalled",
    "stalled-check",
    "limiter",
    "pc",
    "id",
    "repeat",
)

# getState's answers, as conveyor states.
STATES: Final = {
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "delayed": JobState.SCHEDULED,
    "active": JobState.RUNNING,
    "waiting": JobState.QUEUED,
    "prioritized": JobState.QUEUED,
    "waiting-children": JobState.QUEUED,
}


@dataclass(frozen=True, slots=True)
class QueueKeys:
    prefix: str
    queue: str

    @property
    def base(self) -> str:
        """BullMQ's `queue.toKey('')`: job keys are this plus the id."""
        return f"{self.prefix}:{self.queue}:"

    def __getitem__(self, suffix: str) -> str:
        return self.base + suffix

    def job(self, job_id: str) -> str:
        return self.base + job_id

    def many(self, suffixes: str) -> tuple[str, ...]:
        """The keys of space-separated suffixes, in order (as a script's KEYS)."""
        return _many(self.base, suffixes)


@functools.lru_cache(maxsize=1024)
def _many(base: str, suffixes: str) -> tuple[str, ...]:
    # Every claim and outcome names a dozen keys of one queue: built once.
    return tuple(base + suffix for suffix in suffixes.split())


def pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A Redis flat field/value reply as a dict."""
    return {str(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _json(text: str | None, default: Any = None) -> Any:
    if text in (None, ""):
        return default
    try:
        return decode_json(text)
    except ValueError:
        return text


@functools.lru_cache(maxsize=1024)
def _from_opts(text: str | None) -> tuple[int, str | None, float | None, str | None]:
    """What a `Job` takes from its opts, made once per text (the jobs of one
    type share it): max_retries, key (jobId), timeout and headers (JSON text)."""
    opts = _json(text, {}) or {}
    timeout = opts.get(TIMEOUT_OPTION)
    return (
        max(int(opts.get("attempts") or 1) - 1, 0),
        opts.get("jobId") or None,
        float(timeout) if isinstance(timeout, (int, float)) else None,
        _headers(opts.get(HEADERS_OPTION)),
    )


KeepJobs = dict[str, Any]  # BullMQ's keepJobs: {"count": n}, {"age": s, "limit": n}, ...


def _keep_jobs(value: Any) -> KeepJobs | None:
    """A job's removeOnComplete / removeOnFail as BullMQ's worker turns it
    into keepJobs (getKeepJobs): true removes the job, false keeps every
    job, a number keeps that many, an object ({count, age, limit}) is
    taken as it is. None: the job has none, the worker's retention holds."""
    if isinstance(value, bool):
        return {"count": 0 if value else -1}
    if isinstance(value, (int, float)):
        return {"count": int(value)}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k in ("count", "age", "limit")}
    return None


OwnKeeps = tuple[KeepJobs | None, KeepJobs | None]  # on complete, on fail
NO_KEEPS: Final[OwnKeeps] = (None, None)


@functools.lru_cache(maxsize=1024)
def own_keeps(text: str | None) -> OwnKeeps:
    """The keepJobs of a job's own removeOnComplete and removeOnFail (a Node
    producer's; conveyor sets neither), from its opts text. Not to be changed:
    shared by every job of that text."""
    opts = _json(text, {}) or {}
    if not isinstance(opts, dict):
        return NO_KEEPS
    return _keep_jobs(opts.get("removeOnComplete")), _keep_jobs(opts.get("removeOnFail"))


def _ms(text: str | None) -> int:
    """Epoch milliseconds as a hash holds them (written by Lua or Node: an
    integer's text, now and then a float's)."""
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        return int(float(text))


def _log_entry(line: str) -> dict[str, Any]:
    """conveyor writes a log line as JSON text; a Node job.log() line is text."""
    value = _json(line)
    return value if isinstance(value, dict) else {"msg": line}


def _traceback(fields: dict[str, str]) -> str | None:
    # BullMQ keeps a JSON list of stack traces, the newest last.
    traces = _json(fields.get("stacktrace"), [])
    if isinstance(traces, list) and traces:
        return str(traces[-1])
    return None


def conveyor_id(queue: str, bull_id: str) -> str:
    """conveyor's id of the BullMQ job `bull_id` in conveyor queue `queue`.
    BullMQ's ids are unique per queue only (Node's numbered ids repeat in
    every queue), and a worker, like every backend, tells jobs apart by id:
    outside the URL's queue, an id is qualified by its queue."""
    return bull_id if queue == DEFAULT_QUEUE else f"{queue}:{bull_id}"


def bull_id(queue: str, job_id: str) -> str:
    """The BullMQ id in `queue` of conveyor's `job_id` (an id given bare,
    as BullMQ shows it, is taken as it is)."""
    return job_id if queue == DEFAULT_QUEUE else job_id.removeprefix(queue + ":")


def job_from_hash(
    job_id: str,
    queue: str,
    fields: dict[str, str],
    state: JobState,
    logs: Sequence[str] = (),
    token: str | None = None,
    due_ms: float | None = None,
) -> Job:
    """A conveyor `Job` from a BullMQ job hash (HGETALL as a dict); `due_ms`
    is the due time of a delayed job (epoch milliseconds). The record is
    made here rather than through records.stored_job (whose conversions it
    uses): every job a worker claims is read here, and the generic call
    was half the cost of a claimed job's record."""
    get = fields.get
    max_retries, key, timeout, headers = _from_opts(get("opts"))
    created = _ms(get("timestamp"))
    if state is JobState.FAILED and get(CANCELLED):
        state = JobState.CANCELLED
    stored_progress = get("progress")
    progress = _json(stored_progress, 0) if stored_progress else 0
    done = state is JobState.COMPLETED
    processed, finished = get("processedOn"), get("finishedOn")
    if due_ms is None:  # otherwise due its delay after it was made
        due_ms = created + _ms(get("delay"))
    created_at = utc(created / 1000)
    result = get("returnvalue") if done else None
    return Job(
        id=conveyor_id(queue, job_id),
        name=get("name", ""),
        queue=queue,
        payload=decode_json(get("data") or "null"),
        state=state,
        attempts=int(get("ats") or 0),
        max_retries=max_retries,
        priority=int(get("priority") or 0),
        key=key,
        result=decode_json(result) if result else None,
        error=None if done else get("failedReason") or None,
        progress=float(progress) if isinstance(progress, (int, float)) else 0.0,
        created_at=created_at,
        # A delayed job's due time is its score in `delayed` (a retry's too).
        run_at=created_at if due_ms == created else utc(due_ms / 1000),
        started_at=utc(_ms(processed) / 1000) if processed else None,
        finished_at=utc(_ms(finished) / 1000) if finished else None,
        timeout=timeout,
        logs=[_log_entry(line) for line in logs] if logs else [],
        stalls=int(get("stc") or 0),
        cancel_requested=bool(get(CANCEL_REQUESTED)),
        token=token,
        traceback=None if done or "stacktrace" not in fields else _traceback(fields) or None,
        history=history_entries(get(HISTORY)),
        headers=decode_headers(headers),
    )


def _headers(value: Any) -> str | None:
    """The headers conveyor put in a job's opts, as JSON text (a Node job has none)."""
    return value if isinstance(value, str) else None
