"""The one seam between the engine (facade, worker) and storage.

A backend stores jobs and hands them out under leases; it knows nothing of
handlers, retries policy or events. Every method is batch-shaped so a backend
can do a whole batch in one round trip (one transaction, one Lua script).

Contract every backend keeps (the conformance suite checks it):

* Times are epoch seconds (float) in and out of the protocol, except inside
  `Job` records, which carry aware UTC datetimes.
* Payloads and results cross the seam as JSON text (`NewJob.payload`,
  `Outcome.result`), already validated and encoded by the facade or worker; a
  backend stores the text and decodes it only when it builds a `Job` record
  (`Job.payload` and `Job.result` are Python values).
* `enqueue` stores each `NewJob` with state `scheduled` when `run_at > now`,
  else `queued`. A job whose `key` matches a job the backend still retains is
  not stored: the existing record comes back with `duplicate=True`. Within one
  batch a repeated key is a duplicate of its first occurrence.
* `claim` first promotes the due `scheduled` jobs of the given queues to
  `queued`, then takes up to `limit` `queued` jobs of those queues whose name
  is in `names` (None: any name) ordered by (priority, run_at at millisecond
  resolution, enqueue order), sets them `running`, increments `attempts`, sets
  `started_at`, a lease until `now + lease` and the claim's fencing token, and
  returns them in that order, each record with `Job.token` set (records read
  any other way have None). Jobs of other names stay queued, untouched, and
  cost the claim nothing however many sit ahead: a worker claims by the names
  it has handlers for, so in a rolling deploy an old worker leaves new job
  types to the workers that know them. `wait_for_work` filters by `names` the
  same way, so such jobs do not wake a worker that cannot run them.
* The fencing token (`ClaimToken`) is opaque to the engine and never repeats
  for a job, whatever happened to it in between: not the attempt count, which
  a hand-back lowers again. Claim calls take a `claim_id`, made unique per
  call by the caller; memory, SQLite and Redis use it as the token of every
  job the call leases (a fresh random id when none is given). A backend whose
  broker makes its own handles (an SQS receipt handle) may use those as
  tokens, as long as `unclaim(claim_id)` still finds the call's jobs.
* Every call that acts on a running job carries `(job_id, token)` and is
  refused (returns False / LOST) unless the job is still `running` under that
  very token. `heartbeat` is additionally refused once the lease has expired,
  so a worker that lost its lease learns it at once.
* `finish` applies outcomes: COMPLETED (result, trims completed jobs of that
  queue beyond `keep_completed`), FAILED (final, error; trims failed beyond
  `keep_failed` when set), SCHEDULED (a retry `retry_in` seconds after the
  backend's now, else at `run_at`; error kept; queued at once when due),
  CANCELLED, and QUEUED (handed back at shutdown: lease dropped, the attempt
  not counted; the next claim still gets a new token).
* Every attempt that ends (by `finish`, `unclaim` or `recover_expired`)
  appends an entry to the job's history (records.py's `stored_entry`:
  attempt, started_at, finished_at, outcome as `attempt_outcome` names it or
  "stalled" for an expired lease, error), keeping the newest HISTORY_LIMIT.
  FAILED and SCHEDULED store `Outcome.traceback` as the job's traceback;
  COMPLETED clears it, as it clears the error.
* `unclaim(claim_id, now)` undoes a claim whose reply the worker never got
  (a lost reply, a timeout, a dropped connection: the claim may or may not
  have run). Every job still `running` under that claim id is handed back as
  by a QUEUED outcome at `now` (attempt not counted, no stall, lease dropped;
  a cancel-requested one becomes `cancelled`); jobs that moved on (recovered,
  claimed again, finished) are left alone. It returns how many it handed
  back, and a second call for the same id does nothing. A job the worker
  never received was never started, so it must not be failed as stalled.
* `recover_expired` takes every `running` job whose lease expired, adds one to
  its `stalls`, and requeues it (attempt already counted), or fails it with an
  error naming the stalls when `stalls > max_stalled`.
* `cancel` of a scheduled/queued job makes it `cancelled` at once; of a
  running job it sets `cancel_requested`, which the next heartbeat reports. A
  cancel outlives the attempt: a cancel-requested job that is handed back
  (QUEUED), retried (SCHEDULED) or recovered from an expired lease becomes
  `cancelled` instead.
* `retry` gives a failed job exactly one more attempt (max_retries =
  attempts); a cancelled one resumes with max(max_retries, attempts).
* A backend may be called from more than one event loop (the blocking twins
  run on a helper thread's loop), so it keeps no loop-bound state it cannot
  rebuild per loop.

Clocks: one per backend. Every `now` parameter of a call that decides a lease,
a due time or an expiry (claims, heartbeats, recovery, hand-backs, cancel,
retry, schedules due, locks, cache, worker presence) may be None, and None
means the backend's own clock: the server's where there is a server, read
where the decision is made (inside the Lua script on Redis), else the host's
`time.time()`. An explicit `now` is used as given (tests drive time that
way). `clock()` reads that clock. The engine passes None everywhere, and
sends delays rather than times of its own where it can: a retry carries
`Outcome.retry_in`, an enqueue with a delay marks it `NewJob.relative`. So
the skew a backend tolerates between the clocks of its callers is:

* Redis (and any backend with a server): any. Leases, due times, retry
  times, worker presence, locks and the cache are decided by the server's
  clock alone. A caller's clock still stamps what is only shown: a job's
  `finished_at` and the place in line of a job handed back (`Outcome.at`),
  log lines, and the order of jobs due at once enqueued without a key by
  producers with different clocks (FIFO across producers holds to within
  their skew).
* SQLite and memory: none needed. Every caller runs on one host (memory: in
  one process; SQLite: the file must be on a local disk), so they share the
  host's clock.

On every backend a step of the deciding clock itself (the server's, or the
host's) by more than a lease minus a heartbeat interval expires live leases.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from conveyor.job import AttemptOutcome, Job, JobState

ClaimToken = str
"""A claim's fencing token: opaque, compared for equality only, never reused
for the same job (a claim id, a claim counter, a broker's receipt handle)."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do, with the limits it works within.

    The facade reads these to refuse clearly what a backend cannot do
    (NotSupportedError naming the operation, the backend and `hint`), and to
    shape requests to fit (an `enqueue_many` larger than `max_batch` goes out
    in several batches). Flags say whether an operation exists at all; the
    values say how far it goes (None: no limit of the backend's own).
    """

    list_jobs: bool = True
    # Jobs can be looked up by id or key (get_job, wait, results): a broker
    # without a store only carries messages.
    lookup: bool = True
    cancel: bool = True
    retry: bool = True
    purge: bool = True
    stats: bool = True
    progress: bool = True
    recurring: bool = False
    locks: bool = False
    cache: bool = False
    # Lower numbers run first. A broker without priorities refuses priority != 0.
    priorities: bool = True
    # The lowest priority the backend can hold (None: conveyor's whole range).
    # BullMQ's start at 0, its unprioritised jobs, which it runs first.
    min_priority: int | None = None
    # Jobs due at once are claimed in the order they were enqueued (within a
    # priority). An SQS standard queue delivers in roughly that order only.
    ordered: bool = True
    # More of a queue's jobs can be claimed while some of it is running. A
    # FIFO queue hands out a group's next messages only once those in flight
    # are done (jobs without a group= share one group per queue).
    concurrent_claims: bool = True
    # A claim passes over queued jobs of names the worker has no handler for,
    # however many sit ahead. A FIFO queue's group waits for its head instead.
    claims_by_name: bool = True
    # Every decision honours an explicit `now` (tests drive time that way). A
    # broker whose service times its own visibility timeouts (SQS) cannot:
    # a message hidden for a lease stays hidden in real time.
    driven_clock: bool = True
    # A result, heartbeat or progress report from a claim whose lease was lost
    # is always refused. A broker that can only delete a message by the handle
    # its last delivery carried may accept a late one: False says so.
    strong_fencing: bool = True
    # The longest delay (seconds) the backend can hold a job for by itself; a
    # longer delay or a later run_at is refused (or served by a store).
    max_delay: float | None = None
    # The most jobs one enqueue round trip may carry.
    max_batch: int | None = None
    # The largest payload (bytes of JSON) the backend can store or carry.
    max_payload_bytes: int | None = None
    # Idempotency keys are honoured: a second enqueue with a key the backend
    # still holds returns the first job (`duplicate=True`). `key_window` is
    # how long a key is remembered when that is a broker's fixed window (an
    # SQS FIFO queue's 5 minutes, within which a repeat is dropped silently
    # and not reported as a duplicate); None: while the job is retained.
    keys: bool = True
    key_window: float | None = None
    # A key is unique across every queue of the backend (False: within a
    # queue only, as BullMQ's jobIds are).
    keys_global: bool = True
    # The job's id is its key when it has one (BullMQ's jobId): a job enqueued
    # with a key its purged predecessor had gets that id again.
    key_is_id: bool = False
    # `enqueue(..., group=...)`: jobs of one group run one at a time, in
    # order (an SQS FIFO queue's message groups).
    groups: bool = False
    # `enqueue(..., connection=conn)` stores jobs inside the caller's own
    # database transaction (the backend implements TransactionalEnqueue).
    transactional_enqueue: bool = False
    # Queues can be paused (`app.pause`): the backend keeps the set of paused
    # queues (QueuePauses) where every worker reads it. A bare broker has
    # nowhere to keep it.
    pause: bool = True
    # A process that forked after the backend made its first call can go on
    # using it in the child (False: gRPC's channels do not survive a fork, so
    # Pub/Sub's workers must be forked before the backend is used, or spawned).
    fork_after_use: bool = True
    # How many claim exchanges a busy worker keeps in flight (a performance
    # setting, not a semantic): 2 where the server works in a process of its
    # own and one exchange at a time leaves it and the worker idle in turn
    # (Redis: 1.5x to 1.6x the drain rate measured); 1 where the work runs in
    # the worker's own process (SQLite, memory: two were slower) or the server
    # is the bound (PostgreSQL: no gain measured).
    claim_lanes: int = 1
    # Appended to NotSupportedError messages: how to get what is missing.
    hint: str = ""


@dataclass(slots=True)
class NewJob:
    """A job to store, with every option already resolved by the facade."""

    id: str
    name: str
    queue: str
    payload: str  # JSON text
    priority: int
    max_retries: int
    timeout: float | None
    key: str | None
    created_at: float
    run_at: float
    # The job's ordering group, on a backend with `capabilities.groups`.
    group: str | None = None
    # True when run_at is created_at plus a delay (none: due at once), both
    # read from the producer's clock, rather than a time the caller gave. A
    # backend whose clock is not the producer's (a server's) counts the delay
    # from its own now: it shifts created_at and run_at by (its now -
    # created_at). Backends on the producer's host may ignore it.
    relative: bool = False
    # JSON text of `Job.headers` (the enqueue's trace context), stored with
    # the job and returned on every record; None: none.
    headers: str | None = None


class OutcomeKind(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    SCHEDULED = "scheduled"  # retry later
    CANCELLED = "cancelled"
    QUEUED = "queued"  # handed back unfinished at shutdown


def attempt_outcome(kind: OutcomeKind, *, timed_out: bool = False) -> AttemptOutcome:
    """How the history names an attempt that ended with an outcome of `kind`
    (after a requested cancel has turned a hand-back or retry into CANCELLED)."""
    if timed_out and kind in (OutcomeKind.FAILED, OutcomeKind.SCHEDULED):
        return AttemptOutcome.TIMED_OUT
    return _ATTEMPT_OUTCOMES[kind]


_ATTEMPT_OUTCOMES: dict[OutcomeKind, AttemptOutcome] = {
    OutcomeKind.COMPLETED: AttemptOutcome.COMPLETED,
    OutcomeKind.FAILED: AttemptOutcome.FAILED,
    OutcomeKind.SCHEDULED: AttemptOutcome.RETRYING,
    OutcomeKind.CANCELLED: AttemptOutcome.CANCELLED,
    OutcomeKind.QUEUED: AttemptOutcome.HANDED_BACK,
}


@dataclass(slots=True)
class Outcome:
    """How one claimed job ended, reported with the claim's fencing token."""

    job_id: str
    token: ClaimToken
    kind: OutcomeKind
    at: float
    result: str | None = None  # JSON text
    error: str | None = None
    run_at: float | None = None  # for SCHEDULED: when, on the caller's clock
    # For SCHEDULED: run again this many seconds after the backend's now (its
    # own clock, see the module docstring); wins over run_at. A worker sends
    # its backoff this way, so its clock does not move the retry.
    retry_in: float | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    progress: float | None = None
    # For FAILED and SCHEDULED: the formatted traceback, already bounded in
    # size; kept as `Job.traceback` (a COMPLETED outcome clears it).
    traceback: str | None = None
    # For FAILED and SCHEDULED: the attempt ran out of its timeout, which the
    # job's history records as "timed out" rather than failed / retrying.
    timed_out: bool = False
    # Seconds the handler ran, by the worker's monotonic clock (None: it did
    # not run here). For events, metrics and log lines; backends ignore it.
    elapsed: float | None = None


class LeaseStatus(enum.StrEnum):
    HELD = "held"  # lease renewed
    CANCEL = "cancel"  # lease renewed, and a cancel was requested
    LOST = "lost"  # fenced off: expired, recovered, or finished elsewhere


@dataclass(slots=True)
class Heartbeat:
    job_id: str
    token: ClaimToken
    logs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Retention:
    keep_completed: int | None = 1000  # per queue; None keeps all
    keep_failed: int | None = None  # per queue; None keeps until purged


class CancelResult(enum.StrEnum):
    CANCELLED = "cancelled"  # was pending, now cancelled
    REQUESTED = "requested"  # running; the worker is told at its next heartbeat
    FINAL = "final"  # already completed/failed/cancelled: nothing done
    NOT_FOUND = "not_found"


@runtime_checkable
class Backend(Protocol):
    """Storage for jobs. See the module docstring for the contract."""

    url: str
    capabilities: Capabilities

    async def open(self) -> None:
        """Connect / create the schema. Idempotent. Raises BackendUnavailableError."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def clock(self) -> float:
        """The backend's current time, epoch seconds: the clock that decides
        when `now` is None (the server's TIME on Redis, one round trip)."""

    # -- producing
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Store jobs (one round trip); return one record per input, in order."""

    # -- consuming
    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        """Promote due scheduled jobs, then lease up to `limit` queued ones
        named in `names` (None: any name; admin and test callers) under a new
        token (`claim_id` when given)."""

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        """Hand back the jobs still running under `claim_id` (a claim whose
        reply was lost), attempt not counted; return how many."""

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        """Extend leases (and append logs); one status per beat, in order."""

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        """Apply outcomes; True where the token still held the job."""

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        """Record progress and log lines on a running job (fenced)."""

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        """Requeue or fail running jobs whose lease expired at `now` (None:
        the backend's clock); return them.
        A job whose cancel was requested becomes `cancelled` instead."""

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        """Return when work may be available (an enqueue, a due scheduled job)
        or after `timeout` seconds, without spinning. Queued jobs whose name is
        not in `names` (None: any name) are not work for this caller."""

    # -- inspecting and administering
    async def get(self, job_id: str) -> Job | None: ...

    async def get_by_key(self, key: str) -> Job | None: ...

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        """Newest first."""

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult: ...

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        """Put a failed or cancelled job back as queued for one more attempt;
        None when there is no such job or it is not failed/cancelled."""

    async def stats(self) -> dict[str, dict[str, int]]:
        """{queue: {state: count}} for every state, zeros included."""

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        """Delete jobs in these states (never running ones) finished, or for
        pending ones created, before `older_than` (an epoch time; None: all)."""
