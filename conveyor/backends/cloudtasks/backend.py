"""The Cloud Tasks backend: the store keeps the jobs, Cloud Tasks pushes them.

* Enqueue writes the records to the store, then creates one task per new
  job: an HTTP POST to the URL's target carrying the job's id (the payload
  stays in the store), dispatched at the job's run_at (Cloud Tasks holds
  delays up to 30 days: `max_delay`). The task is named after the job's
  idempotency key (a job without a key: its id), so Cloud Tasks itself
  refuses a second task for the key; the store refuses the duplicate first.
* Nothing is claimed by a worker: the endpoint (conveyor.gcp) leases the
  pushed job in the store (`claim_pushed`), runs it and records the outcome;
  the store's token fences the outcome, as on any backend. A worker on this
  URL claims nothing; it still fires recurring schedules (their jobs become
  tasks) and recovers expired leases.
* Retries are Cloud Tasks': the endpoint answers 5xx while the job has
  retries left, and the queue's retry configuration times the next dispatch
  (conveyor's per-job backoff does not apply).
* Cancel: a queued or scheduled job is cancelled in the store, and its task,
  when it is dispatched, is answered 2xx without running. Cloud Tasks cannot
  stop a dispatched task: a running job's cancel is the store's request,
  which the endpoint's heartbeat passes to the handler (`ctx.cancelled`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Final

from conveyor import settings
from conveyor.backends import store_from_url
from conveyor.backends.base import (
    Backend,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    Retention,
)
from conveyor.backends.cloudtasks.client import TasksClient
from conveyor.backends.cloudtasks.url import CloudTasksURL, parse_url
from conveyor.backends.optional import DeliveryStore
from conveyor.backends.store_sides import StoreSides
from conveyor.backends.url_options import without_secrets
from conveyor.job import EnqueueFailedError, InvalidOptionError, Job, JobState

logger = logging.getLogger("conveyor.cloudtasks")

# Cloud Tasks' furthest schedule time.
MAX_DELAY: Final = 30 * 86_400.0
# How many tasks one enqueue creates at once (Cloud Tasks has no batch call).
CREATE_CONCURRENCY: Final = 16
RELEASE_BATCH: Final = 100
SECRET_HEADER: Final = "X-Conveyor-Secret"
# A dispatch deadline beyond the job's timeout: the endpoint records the
# outcome after the handler returns.
DEADLINE_MARGIN: Final = 30.0


class Pushed(enum.Enum):
    """What the store made of a pushed job's claim."""

    CLAIMED = "claimed"
    DONE = "done"  # final, cancelled or gone: the task has nothing left to do
    EARLY = "early"  # scheduled, not due yet by the store's clock
    BUSY = "busy"  # running under another dispatch's live lease


def task_id(job: Job, retry: bool = False) -> str:
    """The task id of a job: from its key when it has one, else from its id.
    A hash first (Google advises against sequential task names), then what
    it was made from. A retry from the store is a new task."""
    source = f"k:{job.key}" if job.key is not None and not retry else f"j:{job.id}"
    if retry:
        source += f":{job.attempts}:{uuid.uuid4().hex}"
    digest = hashlib.sha256(source.encode()).hexdigest()[:48]
    return f"{digest}-{source[0]}"


def task_body(job: Job, task: str) -> bytes:
    return json.dumps({"id": job.id, "name": job.name, "queue": job.queue, "task": task}).encode()


class CloudTasksBackend(StoreSides):
    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.config: CloudTasksURL = parse_url(url)
        store = store_from_url(self.config.store, url, **options)
        if not isinstance(store, DeliveryStore):
            raise InvalidOptionError(
                f"store={self.config.store!r} in {url!r}: that backend cannot be a "
                "Cloud Tasks store (use sqlite, redis or postgresql)"
            )
        self.store: Backend = store
        self._delivery: DeliveryStore = store
        self.capabilities = dataclasses.replace(
            store.capabilities,
            priorities=False,  # Cloud Tasks dispatches by schedule time only
            ordered=False,
            claims_by_name=False,  # the endpoint gets whatever is pushed
            driven_clock=False,  # Cloud Tasks' clock dispatches
            max_delay=MAX_DELAY,
            max_batch=None,
            groups=False,
            transactional_enqueue=False,
            fork_after_use=False,  # gRPC
            # Cloud Tasks pushes to the endpoint, which no paused set stops:
            # pause the Cloud Tasks queue itself (gcloud tasks queues pause).
            pause=False,
            hint="",
        )
        self.client = TasksClient(self.config)
        self.secret = settings.env_str(settings.CONVEYOR_CLOUDTASKS_SECRET)
        self._idle_said = False

    def __repr__(self) -> str:
        return f"<CloudTasksBackend {self.config.display} store={without_secrets(self.store.url)}>"

    async def open(self) -> None:
        await self.store.open()
        await self.client.ensure_queue(self.config.queue_path("default"))

    async def close(self) -> None:
        await self.client.close()
        await self.store.close()

    async def clock(self) -> float:
        return await self.store.clock()

    def _after_fork_in_child(self) -> None:
        self.client.forget_client()
        method = getattr(self.store, "_after_fork_in_child", None)
        if method is not None:
            method()

    # ------------------------------------------------------------------ producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        for queue in {job.queue for job in jobs}:
            self.config.queue_path(queue)  # a name Cloud Tasks refuses: before anything is stored
        records = await self.store.enqueue(jobs)
        fresh = [r for r in records if not r.duplicate]
        failed: list[str] = []
        errors: list[str] = []
        limit = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def create(job: Job) -> None:
            async with limit:
                try:
                    await self._create_task(job)
                except Exception as exc:
                    failed.append(job.id)
                    errors.append(str(exc))

        await asyncio.gather(*(create(job) for job in fresh))
        if failed:
            # Withdrawn from the store, so nothing of them runs later (store_sides).
            why = f"Cloud Tasks did not take {len(failed)} task(s) ({errors[0]})"
            await self._withdraw(failed, why)
        return records

    async def _create_task(self, job: Job, retry: bool = False) -> None:
        queue_path = self.config.queue_path(job.queue)
        await self.client.ensure_queue(queue_path)
        name = task_id(job, retry)
        body = task_body(job, name)
        run_at = job.run_at.timestamp() if job.state is JobState.SCHEDULED and job.run_at else None
        deadline = job.timeout + DEADLINE_MARGIN if job.timeout is not None else None
        headers = {SECRET_HEADER: self.secret} if self.secret else {}
        created = await self.client.create_task(
            queue_path, name, body, run_at=run_at, deadline=deadline, headers=headers
        )
        if not created and not await self._ours(f"{queue_path}/tasks/{name}", body, job):
            # Not our own earlier call answered late: the key's name is
            # taken by a task the store no longer remembers.
            raise EnqueueFailedError(
                f"Cloud Tasks refused task {name} for key {job.key!r}: a task of that key "
                "ran or was deleted lately (Cloud Tasks keeps a task's name taken for about "
                "an hour after it ends; without cloudtasks.tasks.get, a task of our own whose"
                " reply was lost reads so too); use a new key",
                failed=[job.id],
            )

    async def _ours(self, task_name: str, body: bytes, job: Job) -> bool:
        """Whether the task that holds `task_name` is this job's own (made by
        a call of ours whose reply was lost): it has this body, or it is gone
        (Google keeps the name of an ended task) and the job went out (a
        pushed task ran it: it is no longer waiting for its first run)."""
        from google.api_core import exceptions as google_errors

        try:
            found = await self.client.task_body(task_name)
        except google_errors.PermissionDenied:
            found = None  # cannot look (no cloudtasks.tasks.get): the store tells what it can
        if found is not None:
            return found == body
        now = await self.store.get(job.id)
        return now is None or now.attempts > 0 or now.is_final

    # ------------------------------------------------------------------ the endpoint's side

    async def claim_pushed(
        self, job_id: str, lease: float, claim_id: str, max_stalled: int, *, recover: bool = True
    ) -> tuple[Pushed, Job | None]:
        """Lease the job a task was pushed for, as a worker's claim would."""
        job = await self._claim_one(job_id, lease, claim_id)
        if job is not None:
            return Pushed.CLAIMED, job
        current = await self.store.get(job_id)
        if current is None or current.is_final:
            return Pushed.DONE, None
        if current.state is JobState.SCHEDULED:
            # Due by the store's clock? Then make it (and others due) queued.
            while await self._delivery.release_due([current.queue], RELEASE_BATCH):
                job = await self._claim_one(job_id, lease, claim_id)
                if job is not None:
                    return Pushed.CLAIMED, job
            return Pushed.EARLY, None
        if current.state is JobState.RUNNING and recover:
            # Its endpoint may have died: a lease that ran out is recovered.
            await self.store.recover_expired(None, max_stalled)
            return await self.claim_pushed(job_id, lease, claim_id, max_stalled, recover=False)
        return Pushed.BUSY, None

    async def _claim_one(self, job_id: str, lease: float, claim_id: str) -> Job | None:
        (job,) = await self._delivery.claim_ids([job_id], lease, claim_id=claim_id)
        return job

    # ------------------------------------------------------------------ a worker's calls

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
        if not self._idle_said:
            self._idle_said = True
            logger.info(
                "%r: Cloud Tasks pushes jobs to the endpoint (conveyor.gcp.tasks_endpoint); "
                "a worker here claims none, and only fires schedules and recovers leases",
                self,
            )
        return []

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        return await self.store.unclaim(claim_id, now)

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        return await self.store.heartbeat(beats, lease, now)

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        return await self.store.finish(outcomes, retention)

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        return await self.store.recover_expired(now, max_stalled, retention)

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        await asyncio.sleep(timeout)

    # ------------------------------------------------------------------ administering

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        job = await self.store.retry(job_id, now)
        if job is not None and job.state is JobState.QUEUED:
            try:
                await self._create_task(job, retry=True)
            except Exception as exc:
                # Queued with no task, nothing would ever push it (and retry
                # refuses a queued job): it ends cancelled, retryable again.
                await self.store.cancel(job.id, now)
                raise EnqueueFailedError(
                    f"Cloud Tasks did not take the task of job {job.id}'s retry ({exc});"
                    " the job is cancelled: retry it again",
                    failed=[job.id],
                ) from exc
        return job

    async def _send_fired(self, fired: Sequence[Job], jobs: Sequence[NewJob]) -> None:
        for job in fired:
            await self._create_task(job)


__all__ = ["MAX_DELAY", "CloudTasksBackend", "Pushed", "task_body", "task_id"]
