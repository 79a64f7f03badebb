"""A broker backend without a store: the message is the job.

What the broker gives is used as it is: a batch send to enqueue, a (long)
poll to claim, the message's visibility (SQS's visibility timeout, Pub/Sub's
ack deadline) as the lease, extended by the heartbeat, a delete (ack) to
acknowledge, the visibility again for a retry's backoff (or, where the broker
cannot hide a message long enough, the message published again with its
attempts and a delay), and the broker's dead-letter queue. What a broker
cannot do (look a job up, list, cancel, keep a result) is refused with a hint
to add a store; `stored.py` builds on this class when there is one.

Nothing here names a broker: the client (SQSClient's call shapes), the
parsed URL and `BrokerFacts` say what differs.

Tokens: a claim's id, as on every backend; the receipt each message came
with is kept in this process under (job id, token), since the worker that
claimed a job is the one that heartbeats and finishes it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from conveyor.backends.base import (
    CancelResult,
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
)
from conveyor.backends.broker import dead_letters, messages
from conveyor.backends.broker.types import (
    BrokerClient,
    BrokerConfig,
    BrokerFacts,
    Outgoing,
    QueueMissingError,
    Received,
)
from conveyor.job import (
    EnqueueFailedError,
    InvalidPayloadError,
    Job,
    JobState,
    NotSupportedError,
)

logger = logging.getLogger("conveyor.broker")

# What a bare message adds around the payload, at most (ids, times, key).
_ENVELOPE: Final = 2_048
# How long a message of a job type this worker cannot run stays hidden from
# it, so workers that can run it get their turn.
UNKNOWN_NAME_HIDE: Final = 2


@dataclass(slots=True)
class Held:
    """A message this process received and has not acknowledged yet."""

    queue: str  # the broker's name of the queue
    receipt: str
    body: str
    receives: int
    received_at: float  # time.monotonic()


def visibility(seconds: float, most: int) -> int:
    return max(1, min(most, math.ceil(seconds)))


class BrokerBackend:
    def __init__(
        self,
        url: str,
        config: BrokerConfig,
        client: BrokerClient,
        facts: BrokerFacts,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(
                f"unexpected options for the {facts.scheme}:// backend: {', '.join(options)}"
            )
        self.url = url
        self.config = config
        self.broker = client
        self.facts = facts
        self.capabilities = facts.bare
        self._held: dict[tuple[str, ClaimToken], Held] = {}
        self._held_lock = threading.Lock()
        # Outcomes the store applied whose broker calls are not done yet: a
        # finish retried after one of those calls failed still accepts them.
        self._applied: set[tuple[str, ClaimToken]] = set()
        self.queues_seen: set[str] = {"default"}
        # Per conveyor queue, whether this process's last receive on it came
        # back empty: how a broker that counts nothing (Pub/Sub) tells an idle
        # queue (StoredBrokerBackend's reconcile).
        self.came_back_empty: dict[str, bool] = {}
        self._wakes: dict[str, asyncio.Event] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config.display}>"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        # Resolving the default queue checks credentials, the endpoint and
        # the queue (or creates it) before any job is taken.
        await self.broker.queue_url(self.config.queue)

    async def close(self) -> None:
        await self.broker.close()

    async def clock(self) -> float:
        return time.time()

    # Fork safety (conveyor/forking.py calls these): the child drops the
    # parent's HTTP clients and held receipts (the parent still uses them).
    def _before_fork(self) -> None:
        self._fork_hook("_before_fork")

    def _after_fork_in_parent(self) -> None:
        self._fork_hook("_after_fork_in_parent")

    def _after_fork_in_child(self) -> None:
        self.broker.forget_clients()
        self._held = {}
        self._held_lock = threading.Lock()
        self._applied = set()
        self._wakes = {}
        self._fork_hook("_after_fork_in_child")

    def _fork_hook(self, name: str) -> None:
        """The store's own fork hook, where there is a store."""

    def broker_queue(self, queue: str) -> str:
        self.queues_seen.add(queue)
        return self.config.queue_name(queue)

    # ------------------------------------------------------------------ producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        now = time.time()
        by_queue: dict[str, list[Outgoing]] = defaultdict(list)
        records = []
        for new in jobs:
            delay = max(0.0, new.run_at - (new.created_at if new.relative else now))
            # Where a delay is pulled early (and so delivered) before its
            # time, the message's receives do not count its attempts.
            body = messages.job_body(
                new, count_receives=not (delay > 0 and self.facts.early_pulls_count)
            )
            size = messages.body_size(body)
            most = self.facts.max_message_bytes
            if size > most:
                name = self.facts.name
                raise InvalidPayloadError(
                    f"job {new.name!r} makes a {name} message of {size:,} bytes, over "
                    f"{name}'s {most:,}: pass a reference to the data, or add a store "
                    f"(?store=...), which keeps payloads and sends {name} only the job's id"
                )
            by_queue[self.broker_queue(new.queue)].append(
                Outgoing(
                    new.id,
                    body,
                    min(self.facts.max_delay, math.ceil(delay)),
                    *self.fifo_fields(new.id, new.key, new.queue, new.group),
                )
            )
            state = JobState.SCHEDULED if delay > 0 else JobState.QUEUED
            records.append(messages.enqueued_record(new, state, now + delay))
        await self._send_all(by_queue)
        return records

    def fifo_fields(
        self, job_id: str, dedup: str | None, queue: str, group: str | None
    ) -> tuple[str | None, str | None]:
        """The group (SQS's MessageGroupId, Pub/Sub's ordering key) and the
        deduplication id, where the broker orders: the job's group, else the
        URL's default group, else one group per conveyor queue (strict
        order); the deduplication id is `dedup`, else the job's id."""
        if not self.facts.fifo:
            return None, None
        return group or self.facts.default_group or queue, dedup or job_id

    async def _send_all(self, by_queue: dict[str, list[Outgoing]]) -> None:
        """Send every queue's messages; raise naming each job that did not go out."""
        results = await asyncio.gather(
            *(self.broker.send(name, out) for name, out in by_queue.items()),
            return_exceptions=True,
        )
        failed: dict[str, str] = {}
        sent = 0
        for (_, out), result in zip(by_queue.items(), results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                failed.update({m.entry_id: str(result) for m in out})
            else:
                failed.update(result)
                sent += len(out) - len(result)
        if failed:
            listed = "; ".join(f"{job_id}: {why}" for job_id, why in list(failed.items())[:5])
            more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
            raise EnqueueFailedError(
                f"{self.facts.name} did not confirm {len(failed)} of {sent + len(failed)} "
                f"job(s): {listed}{more} (a call that failed outright may still have "
                "delivered some of its batch; with a store, those jobs are cancelled)",
                failed=sorted(failed),
            )

    # ------------------------------------------------------------------ consuming

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
        if limit <= 0:
            return []
        received = await self._receive(queues, limit, 0, lease)
        return await self._take(received, lease, claim_id or uuid.uuid4().hex, names, now)

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
        if limit <= 0:
            return []
        wake = self._wakes.setdefault(waiter, asyncio.Event())
        wake.clear()
        deadline = time.monotonic() + timeout
        # Brokers long-poll in whole seconds, shared out across the queues:
        # what the polls leave of the timeout is a pause (cut short by
        # wake_waiter), then one short poll, so an idle worker neither spins
        # nor oversleeps.
        wait = min(self.config.wait, int(timeout))
        received = await self._receive(queues, limit, wait, lease)
        left = deadline - time.monotonic()
        if not received and left > 0.05 and not wake.is_set():
            try:
                async with asyncio.timeout(left):
                    await wake.wait()
            except TimeoutError:
                pass
            received = await self._receive(queues, limit, 0, lease)
        return await self._take(received, lease, claim_id or uuid.uuid4().hex, names)

    async def wake_waiter(self, waiter: str) -> None:
        wake = self._wakes.get(waiter)
        if wake is not None:
            wake.set()

    async def _receive(
        self, queues: Sequence[str], limit: int, wait: int, lease: float
    ) -> list[Received]:
        """Up to `limit` messages from `queues`, in the order given: a long
        poll shared out across the queues, then more short polls of ten
        while a queue keeps giving full batches."""
        hidden = visibility(lease, self.facts.max_visibility)
        got: list[Received] = []
        share = wait // len(queues) if queues else 0
        for queue in queues:
            name = self.broker_queue(queue)
            while len(got) < limit:
                batch = await self.broker.receive(name, limit - len(got), share, hidden)
                got += batch
                self.came_back_empty[queue] = not batch
                share = 0
                if len(batch) < 10:
                    break
        return got

    async def _take(
        self,
        received: list[Received],
        lease: float,
        claim_id: str,
        names: Sequence[str] | None,
        now: float | None = None,
    ) -> list[Job]:
        wanted, _ = await self._sort(received, names)
        jobs = []
        for message, pointer in wanted:
            assert pointer.job is not None
            job = messages.bare_job(pointer.job, message.receives, claim_id, now)
            self._hold(job.id, claim_id, message)
            jobs.append(job)
        return jobs

    async def _sort(
        self, received: list[Received], names: Sequence[str] | None
    ) -> tuple[list[tuple[Received, messages.Pointer]], list[Received]]:
        """Split off messages this worker will not run: foreign bodies (hidden
        for as long as the broker allows, for the redrive policy to move aside) and
        job types it has no handler for (hidden briefly, for other workers)."""
        wanted: list[tuple[Received, messages.Pointer]] = []
        aside: dict[str, list[tuple[str, int]]] = defaultdict(list)
        others: list[Received] = []
        for message in received:
            pointer = messages.parse(message.body)
            if pointer is None or (pointer.job is None) == self._bare_messages():
                logger.error(
                    "%s queue %s: message %s is not a conveyor job (or not of this "
                    "backend's kind: with or without a store); left for the redrive policy",
                    self.facts.name,
                    message.queue,
                    message.message_id,
                )
                aside[message.queue].append((message.receipt, self.facts.max_visibility))
            elif names is not None and pointer.name not in names:
                aside[message.queue].append((message.receipt, UNKNOWN_NAME_HIDE))
                others.append(message)
            else:
                wanted.append((message, pointer))
        for queue, changes in aside.items():
            await self.broker.change_visibility(queue, changes)
        return wanted, others

    def _bare_messages(self) -> bool:
        return True

    def _hold(self, job_id: str, token: ClaimToken, message: Received) -> None:
        with self._held_lock:
            self._held[(job_id, token)] = Held(
                message.queue, message.receipt, message.body, message.receives, time.monotonic()
            )

    def _held_of(self, job_id: str, token: ClaimToken) -> Held | None:
        with self._held_lock:
            return self._held.get((job_id, token))

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        with self._held_lock:
            mine = [key for key in self._held if key[1] == claim_id]
            held = [self._held.pop(key) for key in mine]
        await self._set_visibility([(h, 0) for h in held])
        return len(held)

    async def _set_visibility(self, changes: Sequence[tuple[Held, int]]) -> list[bool]:
        by_queue: dict[str, list[int]] = defaultdict(list)
        for index, (held, _) in enumerate(changes):
            by_queue[held.queue].append(index)
        results = [False] * len(changes)
        for queue, indexes in by_queue.items():
            done = await self.broker.change_visibility(
                queue, [(changes[i][0].receipt, changes[i][1]) for i in indexes]
            )
            for i, ok in zip(indexes, done, strict=True):
                results[i] = ok
        return results

    async def _delete(self, held: Sequence[Held]) -> None:
        by_queue: dict[str, list[str]] = defaultdict(list)
        for h in held:
            by_queue[h.queue].append(h.receipt)
        for queue, receipts in by_queue.items():
            done = await self.broker.delete(queue, receipts)
            if not all(done):
                logger.warning(
                    "%s queue %s: %d acknowledgement(s) refused (the message was "
                    "received again elsewhere); it will run again",
                    self.facts.name,
                    queue,
                    done.count(False),
                )

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        statuses = await self._store_heartbeat(beats, lease, now)
        live = []
        for index, (beat, status) in enumerate(zip(beats, statuses, strict=True)):
            held = self._held_of(beat.job_id, beat.token)
            if held is None:
                if self._bare_messages():
                    statuses[index] = LeaseStatus.LOST
            elif status is not LeaseStatus.LOST:
                live.append((index, held))
        extended = await self._set_visibility(
            [(held, visibility(lease, self.facts.max_visibility)) for _, held in live]
        )
        if self._bare_messages():
            # Without a store, the broker alone judges the lease: a receipt it
            # refuses (the message came back and went to another) is lost.
            for (index, _), ok in zip(live, extended, strict=True):
                if not ok:
                    statuses[index] = LeaseStatus.LOST
        return statuses

    async def _store_heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None
    ) -> list[LeaseStatus]:
        return [LeaseStatus.HELD for _ in beats]

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        accepted = await self._store_finish(outcomes, retention)
        keys = [(o.job_id, o.token) for o in outcomes]
        with self._held_lock:
            self._applied.update(key for key, ok in zip(keys, accepted, strict=True) if ok)
        deletes: list[Held] = []
        changes: list[tuple[Held, int]] = []
        failed: list[tuple[Held, Outcome]] = []
        for outcome, ok in zip(outcomes, accepted, strict=True):
            # Still held until the broker calls below are done: if one of
            # them fails, the worker sends the batch again and it is redone.
            held = self._held_of(outcome.job_id, outcome.token)
            if held is None or not ok:
                continue
            if outcome.kind is OutcomeKind.QUEUED:
                changes.append((held, 0))
            elif outcome.kind is OutcomeKind.SCHEDULED:
                await self._retry_message(held, outcome, deletes, changes)
            else:
                if outcome.kind is OutcomeKind.FAILED and self._bare_messages():
                    failed.append((held, outcome))
                deletes.append(held)
        if failed:
            await self._dead_letter(failed)
        await self._set_visibility(changes)
        await self._delete(deletes)
        with self._held_lock:
            for key in keys:
                self._held.pop(key, None)
                self._applied.discard(key)
        return accepted

    async def _store_finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        return [self._held_of(o.job_id, o.token) is not None for o in outcomes]

    async def _retry_message(
        self,
        held: Held,
        outcome: Outcome,
        deletes: list[Held],
        changes: list[tuple[Held, int]],
    ) -> None:
        """A retry's backoff is the message's visibility: SQS allows 12 hours
        from the receive, so a longer backoff is cut to that. Where the broker
        republishes retries (`retry_by_republish`), the message goes out again
        with its attempts so far and the backoff as its delay."""
        wait = outcome.retry_in
        if wait is None:
            wait = max(0.0, (outcome.run_at or time.time()) - time.time())
        left = self.facts.max_visibility - (time.monotonic() - held.received_at) - 1
        if self.facts.retry_by_republish and (
            wait > left or await self.broker.dead_letter_queue(held.queue) is None
        ):
            # Hidden, the message could not wait long enough, or its
            # redelivery would not be counted (Pub/Sub counts deliveries
            # only under a dead-letter policy).
            await self._republish(held, outcome, math.ceil(wait))
            deletes.append(held)
            return
        changes.append((held, max(0, min(math.ceil(wait), int(left)))))

    async def _republish(self, held: Held, outcome: Outcome, delay: int) -> None:
        await dead_letters.republish(self, held, outcome, delay)

    async def _dead_letter(self, failed: Sequence[tuple[Held, Outcome]]) -> None:
        await dead_letters.send_failed(self, failed)

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        # Nowhere to keep it without a store; the lease is what is checked.
        return self._held_of(job_id, token) is not None

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        # The broker brings a message back by itself when its visibility
        # ends: nothing to sweep.
        return []

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        # Workers claim with a long poll (claim_blocking); asking whether a
        # queue has messages would cost as much as receiving them.
        await asyncio.sleep(min(timeout, 1.0))

    # ------------------------------------------------------------------ inspecting

    def _unsupported(self, what: str) -> NotSupportedError:
        return NotSupportedError(
            f"the {self.facts.scheme}:// backend cannot {what} without a store; "
            f"{self.facts.store_hint}"
        )

    async def get(self, job_id: str) -> Job | None:
        raise self._unsupported("look a job up")

    async def get_by_key(self, key: str) -> Job | None:
        raise self._unsupported("look a job up by key")

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        raise self._unsupported("list jobs")

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        raise self._unsupported("cancel a job")

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        raise self._unsupported("retry one job (`conveyor retry --all-failed` redrives the DLQ)")

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        raise self._unsupported("purge jobs")

    async def stats(self) -> dict[str, dict[str, int]]:
        """The broker's own counts as states (see `count_states`); a broker
        that cannot count refuses, naming the fix."""
        if not self.facts.counts:
            raise self._unsupported("count jobs (it has no message counts)")
        out = {}
        for row in await self.broker_stats():
            out[str(row["conveyor_queue"])] = self.count_states(row)
        return out

    def count_states(self, row: dict[str, Any]) -> dict[str, int]:
        """A `broker_stats` row as job states (a broker with counts says how)."""
        raise NotImplementedError

    async def broker_stats(self) -> list[dict[str, Any]]:
        """Per conveyor queue this process has used: its broker-side name and
        approximate counts, and those of its dead-letter queue (None when it
        has none)."""
        rows: list[dict[str, Any]] = []
        if not self.facts.counts:
            return rows
        for queue in sorted(self.queues_seen):
            name = self.config.queue_name(queue)
            try:
                counts: dict[str, Any] = await self.broker.counts(name)
            except QueueMissingError:
                if queue == "default":
                    raise
                continue
            dlq = await self.broker.dead_letter_queue(name)
            dead: dict[str, Any] | None = None
            if dlq is not None:
                dead = {"queue": dlq, **await self.broker.counts(dlq)}
            rows.append(
                {"conveyor_queue": queue, "queue": name, **counts, "dead_letter_queue": dead}
            )
        return rows

    async def redrive(self, queue: str | None = None, limit: int | None = None) -> int:
        """Move messages from the dead-letter queue back to their queue for
        another round of attempts; how many moved."""
        return await dead_letters.redrive(self, queue, limit)
