"""A broker backend with a store (`sqs://jobs?store=<conveyor URL>`, the
same on `pubsub://`).

The store (SQLite, Redis or PostgreSQL, through its `DeliveryStore` side)
keeps every job record and decides; the broker delivers. A message carries
only the job's id, name and queue, so payloads are as large as the store
allows.

* Enqueue writes the records, then sends a message for each job due now.
  Delayed jobs and retries are held by the store (`scheduled`) and sent when
  due (`release_due`, run before each claim), so delays have no broker limit
  (SQS's 15 minutes, Pub/Sub's none at all) and FIFO queues take them too.
* A received message claims its job in the store (`claim_ids`): the store's
  token fences every later word about it, as on any backend. A message whose
  job is final, gone or held is deleted; one whose job still runs elsewhere
  is hidden for a lease and looked at again.
* Acknowledging deletes the message; a hand-back (or a retry due at once)
  makes it visible again.
* Recovery is the store's (leases expire there); the broker brings the
  message back by itself. Two sweeps run with it: the dead-letter queue's
  messages (moved there by the broker after its most deliveries) fail their
  jobs in the store, and, where the broker counts messages, queued jobs it
  holds no message for (a producer that stopped between the store and the
  broker) are sent again when the queue is idle. A duplicate message is
  harmless: the store lets one claim through.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from conveyor.backends import store_from_url
from conveyor.backends.base import (
    Backend,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
)
from conveyor.backends.broker import messages
from conveyor.backends.broker.bare import BrokerBackend, Held, visibility
from conveyor.backends.broker.groups import Chosen
from conveyor.backends.broker.types import (
    BrokerClient,
    BrokerConfig,
    BrokerFacts,
    Outgoing,
    Received,
)
from conveyor.backends.optional import DeliveryStore
from conveyor.backends.store_sides import StoreSides
from conveyor.backends.stores import CacheStore
from conveyor.backends.url_options import without_secrets
from conveyor.job import (
    InvalidOptionError,
    Job,
    JobState,
    NotSupportedError,
)

logger = logging.getLogger("conveyor.broker")

RELEASE_EVERY: Final = 0.25  # seconds between two releases of due held jobs
RELEASE_BATCH: Final = 100
SWEEP_EVERY: Final = 10.0  # the dead-letter queue
RECONCILE_EVERY: Final = 60.0  # queued jobs without a message
RECONCILE_AGE: Final = 60.0  # a queued job this old on an idle queue lost its message
GROUP_TTL: Final = 30 * 86_400.0


class StoredBrokerBackend(StoreSides, BrokerBackend):
    def __init__(
        self,
        url: str,
        config: BrokerConfig,
        client: BrokerClient,
        facts: BrokerFacts,
        **options: Any,
    ) -> None:
        super().__init__(url, config, client, facts, **options)
        assert self.config.store is not None
        store = store_from_url(self.config.store, url)
        if not isinstance(store, DeliveryStore):
            raise InvalidOptionError(
                f"store={self.config.store!r} in {url!r}: that backend cannot be a "
                f"{facts.name} store (use sqlite, redis or postgresql)"
            )
        self.store: Backend = store
        self._delivery: DeliveryStore = store
        # The store's, less what the broker's delivery takes away (`facts.stored`);
        # claims are the broker's receives, which keep one lane (not the store's).
        self.capabilities = dataclasses.replace(
            store.capabilities, **{"claim_lanes": 1, **facts.stored}
        )
        # Where a held job's group is kept (SQS's key unchanged from before).
        self._group_key = f"conveyor:{facts.scheme}-group:"
        self._released_at = 0.0
        self._swept_at = 0.0
        self._reconciled_at = time.monotonic()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.config.display} store={without_secrets(self.store.url)}>"
        )

    async def open(self) -> None:
        await self.store.open()
        await super().open()

    async def close(self) -> None:
        await super().close()
        await self.store.close()

    async def clock(self) -> float:
        return await self.store.clock()

    def _bare_messages(self) -> bool:
        return False

    def _fork_hook(self, name: str) -> None:
        method = getattr(self.store, name, None)
        if method is not None:
            method()

    # ------------------------------------------------------------------ sending

    def _outgoing(self, job: Job, group: str | None, fresh: bool) -> Outgoing:
        body = messages.pointer_body(job.id, job.name, job.queue, group)
        # A retry's release is a new message: its own deduplication id. A
        # message sent again for the same attempt (`conveyor retry` of a
        # cancelled job, the resend of a lost one) needs one never used, or
        # a FIFO queue drops it within 5 minutes of the first.
        dedup = f"{job.id}-{job.attempts}" + (f"-{uuid.uuid4().hex[:12]}" if fresh else "")
        fifo = self.fifo_fields(job.id, dedup, job.queue, group)
        return Outgoing(job.id, body, 0, *fifo)

    async def _send_jobs(
        self, jobs: Sequence[Job], groups: Mapping[str, str | None], fresh: bool = False
    ) -> None:
        by_queue: dict[str, list[Outgoing]] = defaultdict(list)
        for job in jobs:
            by_queue[self.broker_queue(job.queue)].append(
                self._outgoing(job, groups.get(job.id), fresh)
            )
        if by_queue:
            await self._send_all(by_queue)

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        records = await self.store.enqueue(jobs)
        groups = {new.id: new.group for new in jobs if new.group is not None}
        # Every grouped job's group, not only held ones': a retry or a resend
        # of a job sent at once needs it too.
        await self._remember_groups([r.id for r in records if not r.duplicate], groups)
        due = [r for r in records if not r.duplicate and r.state is JobState.QUEUED]
        try:
            await self._send_jobs(due, groups)
        except Exception as exc:
            # Withdrawn from the store, so nothing of them runs later (store_sides).
            failed = sorted(getattr(exc, "failed", [r.id for r in due]))
            await self._withdraw(failed, str(exc))
        return records

    async def _remember_groups(
        self, job_ids: Sequence[str], groups: Mapping[str, str | None]
    ) -> None:
        """The store has no place for a FIFO group: held jobs keep theirs in
        the store's cache until they are sent."""
        if not isinstance(self.store, CacheStore):
            return
        for job_id in job_ids:
            group = groups.get(job_id)
            if group is not None:
                await self.store.cache_set(self._group_key + job_id, f'"{group}"', GROUP_TTL)

    async def _groups_of(self, jobs: Sequence[Job]) -> dict[str, str | None]:
        if not self.facts.fifo or not isinstance(self.store, CacheStore):
            return {}
        groups: dict[str, str | None] = {}
        for job in jobs:
            stored = await self.store.cache_get(self._group_key + job.id)
            groups[job.id] = None if stored is None else stored.strip('"')
        return groups

    async def _release(self, queues: Sequence[str], force: bool = False) -> None:
        """Send the held jobs that are due (delays, retries' backoff)."""
        now = time.monotonic()
        if not force and now - self._released_at < RELEASE_EVERY:
            return
        self._released_at = now
        while True:
            jobs = await self._delivery.release_due(queues, RELEASE_BATCH)
            if not jobs:
                return
            await self._send_jobs(jobs, await self._groups_of(jobs))
            if len(jobs) < RELEASE_BATCH:
                return

    # ------------------------------------------------------------------ claiming

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
        await self._release(queues)
        return await super().claim(queues, limit, lease, now, claim_id=claim_id, names=names)

    async def claim_blocking(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        timeout: float,
        waiter: str,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        await self._release(queues)
        return await super().claim_blocking(
            queues, limit, lease, timeout, waiter, claim_id=claim_id, names=names
        )

    async def _lease(
        self, chosen: list[Chosen], lease: float, claim_id: str, now: float | None
    ) -> list[Job]:
        records = await self._delivery.claim_ids(
            [pointer.id for _, pointer, _ in chosen], lease, now, claim_id=claim_id
        )
        jobs = []
        unsettled = []
        for (message, pointer, received_at), job in zip(chosen, records, strict=True):
            if job is None:
                unsettled.append((message, pointer))
            else:
                self._hold(job.id, claim_id, message, received_at)
                jobs.append(job)
        if unsettled:
            await self._settle(unsettled, lease, claim_id)
        return jobs

    async def _settle(
        self, unsettled: Sequence[tuple[Received, messages.Pointer]], lease: float, claim_id: str
    ) -> None:
        """Messages whose job the store would not lease: a duplicate, a
        message of a job that moved on, or one that came back while its job
        still runs (elsewhere, or on a worker that died: recovery requeues it
        when its lease ends in the store). On a FIFO broker, the group of a
        deleted one goes on with its next message; that of a hidden one
        comes back with it, in order."""
        deletes: dict[str, list[str]] = defaultdict(list)
        hides: dict[str, list[tuple[str, int]]] = defaultdict(list)
        ready = False
        for message, pointer in unsettled:
            job = await self.store.get(pointer.id)
            if job is None or job.is_final or job.state is JobState.SCHEDULED:
                # Done with, or held by the store, which sends it again when due.
                deletes[message.queue].append(message.receipt)
                ready = self._gate.settled(pointer.id, claim_id) or ready
            else:
                hides[message.queue].append(
                    (message.receipt, visibility(lease, self.facts.max_visibility))
                )
                hides[message.queue] += [
                    (w.message.receipt, 0) for w in self._gate.back(pointer.id, claim_id)
                ]
        for queue, receipts in deletes.items():
            await self.broker.delete(queue, receipts)
        for queue, changes in hides.items():
            await self.broker.change_visibility(queue, changes)
        if ready:
            self._wake_all()

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        count = await self.store.unclaim(claim_id, now)
        await super().unclaim(claim_id, now)  # their messages visible again now
        return count

    # ------------------------------------------------------------------ running

    async def _store_heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None
    ) -> list[LeaseStatus]:
        return await self.store.heartbeat(beats, lease, now)

    async def _store_finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        applied = await self.store.finish(outcomes, retention)
        # A finish sent again after its broker calls failed: the store has
        # the outcome already (and refuses it now); it was accepted.
        with self._held_lock:
            return [
                ok or (o.job_id, o.token) in self._applied
                for o, ok in zip(outcomes, applied, strict=True)
            ]

    async def _retry_message(
        self,
        held: Held,
        outcome: Outcome,
        deletes: list[Held],
        changes: list[tuple[Held, int]],
    ) -> None:
        if outcome.retry_in is not None:
            due_now = outcome.retry_in <= 0
        else:
            # A retry at a time (not after a delay): the store judged it due
            # or not by its own clock; ask it which.
            job = await self.store.get(outcome.job_id)
            due_now = job is not None and job.state is JobState.QUEUED
        if due_now:
            changes.append((held, 0))  # the store queued it again: reuse the message
        else:
            deletes.append(held)  # held by the store until due, then sent anew

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        if self.facts.fifo:
            await self._keep_groups_of_retries(outcomes)
        return await super().finish(outcomes, retention)

    async def _keep_groups_of_retries(self, outcomes: Sequence[Outcome]) -> None:
        retried: dict[str, str | None] = {}
        for outcome in outcomes:
            if outcome.kind is OutcomeKind.SCHEDULED:
                held = self._held_of(outcome.job_id, outcome.token)
                pointer = messages.parse(held.body) if held else None
                if pointer is not None and pointer.group is not None:
                    retried[outcome.job_id] = pointer.group
        if retried:
            await self._remember_groups(list(retried), retried)

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        recovered = await self.store.recover_expired(now, max_stalled, retention)
        # The sweeps are extra: a broker error in one is logged, and the
        # jobs the store recovered still reach the worker (for their events).
        clock = time.monotonic()
        try:
            if clock - self._swept_at >= SWEEP_EVERY:
                self._swept_at = clock
                await self._sweep_dead_letters(max_stalled, retention)
            if clock - self._reconciled_at >= RECONCILE_EVERY:
                self._reconciled_at = clock
                await self._reconcile()
        except Exception as exc:
            logger.warning("%r: a sweep of the broker failed (tried again later): %s", self, exc)
        return recovered

    async def _sweep_dead_letters(self, max_stalled: int, retention: Retention | None) -> None:
        """Empty the dead-letter queue, where the redrive policy moved the
        messages received maxReceiveCount times unacknowledged. The store,
        not the broker, counts a job's attempts and stalls (and fails it when
        they run out): a receive may not have been an attempt at all (a worker
        without the job's handler hid the message, or a duplicate came while
        the job ran). So a job the store still has queued is sent again, and a
        message is dropped once its job is final; one whose job runs or waits
        in the store is looked at again later."""
        for queue in sorted(self.queues_seen):
            name = self.config.queue_name(queue)
            dlq = await self.broker.dead_letter_queue(name)
            if dlq is None:
                continue
            for message in await self.broker.receive(dlq, 10, 0, 30):
                pointer = messages.parse(message.body)
                if pointer is None:
                    continue
                token = f"dlq-{message.message_id}"
                # Leased for a moment so that no worker starts it meanwhile.
                (job,) = await self._delivery.claim_ids([pointer.id], 1.0, claim_id=token)
                if job is not None:
                    back = Outcome(job.id, token, OutcomeKind.QUEUED, time.time())
                    await self.store.finish([back], retention or Retention())
                    logger.warning(
                        "job %s (%s): %s moved its message to the dead-letter queue %s after "
                        "%d receive(s) (%s) while the store had it queued; sent again",
                        job.id,
                        job.name,
                        self.facts.name,
                        dlq,
                        message.receives,
                        self.facts.dead_letter_rule,
                    )
                    await self._send_jobs([job], await self._groups_of([job]), fresh=True)
                else:
                    current = await self.store.get(pointer.id)
                    if current is not None and not current.is_final:
                        continue  # running or held by the store: look again later
                await self.broker.delete(dlq, [message.receipt])

    async def _reconcile(self) -> None:
        """Send again the queued jobs of an idle queue the broker holds no
        message for: a producer stopped between writing the store and
        sending, or a release was cut short. A duplicate costs nothing. Idle:
        the broker counts no message, or, where it counts nothing, this
        process's last receive on the queue came back empty."""
        cutoff = time.time() - RECONCILE_AGE
        for queue in sorted(self.queues_seen):
            if self.facts.counts:
                counts = await self.broker.counts(self.config.queue_name(queue))
                if any(counts.values()):
                    continue
            elif not self.came_back_empty.get(queue, False):
                continue
            queued = await self.store.list_jobs(
                state=JobState.QUEUED, name=None, queue=queue, limit=100, offset=0
            )
            lost = [
                job
                for job in queued
                if job.created_at is not None
                and job.created_at.timestamp() < cutoff
                and (job.run_at is None or job.run_at.timestamp() < cutoff)
            ]
            if lost:
                logger.warning(
                    "%s queue %s holds no message for %d queued job(s); sending them again",
                    self.facts.name,
                    self.config.queue_name(queue),
                    len(lost),
                )
                await self._send_jobs(lost, await self._groups_of(lost), fresh=True)

    # ------------------------------------------------------------------ administering

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        job = await self.store.retry(job_id, now)
        if job is not None and job.state is JobState.QUEUED:
            await self._send_jobs([job], await self._groups_of([job]), fresh=True)
        return job

    async def redrive(self, queue: str | None = None, limit: int | None = None) -> int:
        raise NotSupportedError(
            "with a store, failed jobs are retried from the store (conveyor retry); "
            "the dead-letter queue's messages are swept into it by the workers"
        )

    async def _send_fired(self, fired: Sequence[Job], jobs: Sequence[NewJob]) -> None:
        groups = {new.id: new.group for new in jobs}
        await self._send_jobs(fired, groups)
