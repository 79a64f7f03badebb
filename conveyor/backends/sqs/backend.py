"""The SQS backend without a store: the message is the job.

What SQS gives is used as it is: SendMessageBatch to enqueue, long-polling
ReceiveMessage to claim, the visibility timeout as the lease (extended by
the heartbeat), DeleteMessageBatch to acknowledge, the visibility timeout
again for a retry's backoff, and the queue's redrive policy (plus conveyor's
own send on a final failure) for the dead-letter queue. What SQS cannot do
(look a job up, list, cancel, keep a result) is refused with a hint to add
a store; `stored.py` builds on this class when there is one.

Tokens: a claim's id, as on every backend; the receipt handle each message
came with is kept in this process under (job id, token), since the worker
that claimed a job is the one that heartbeats and finishes it.
"""

from __future__ import annotations

import asyncio
import json
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
    Capabilities,
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
)
from conveyor.backends.sqs import messages
from conveyor.backends.sqs.client import (
    MAX_DELAY,
    MAX_VISIBILITY,
    Outgoing,
    QueueMissingError,
    Received,
    SQSClient,
)
from conveyor.backends.sqs.url import SQSURL, parse_url
from conveyor.job import (
    EnqueueFailedError,
    InvalidPayloadError,
    Job,
    JobState,
    NotSupportedError,
    utc,
)

logger = logging.getLogger("conveyor.sqs")

# SQS's largest message by default (a queue may be set lower or, on AWS, up
# to 1 MiB): a bare message carries the payload, so a larger one is refused.
MAX_MESSAGE_BYTES: Final = 262_144
# What a bare message adds around the payload, at most (ids, times, key).
_ENVELOPE: Final = 2_048
# How long a message of a job type this worker cannot run stays hidden from
# it, so workers that can run it get their turn.
UNKNOWN_NAME_HIDE: Final = 2
STORE_HINT: Final = "add ?store=<a conveyor URL> (sqlite, redis or postgresql) to the SQS URL"


@dataclass(slots=True)
class Held:
    """A message this process received and has not acknowledged yet."""

    queue: str  # the SQS queue's name
    receipt: str
    body: str
    receives: int
    received_at: float  # time.monotonic()


def visibility(seconds: float) -> int:
    return max(1, min(MAX_VISIBILITY, math.ceil(seconds)))


class SQSBackend:
    def __init__(self, url: str, **options: Any) -> None:
        if options:
            raise TypeError(f"unexpected options for the SQS backend: {', '.join(options)}")
        self.url = url
        self.config: SQSURL = parse_url(url)
        self.sqs = SQSClient(self.config)
        self.capabilities = self._capabilities()
        self._held: dict[tuple[str, ClaimToken], Held] = {}
        self._held_lock = threading.Lock()
        self._queues_seen: set[str] = {"default"}
        self._wakes: dict[str, asyncio.Event] = {}

    def _capabilities(self) -> Capabilities:
        fifo = self.config.fifo
        return Capabilities(
            list_jobs=False,
            cancel=False,
            retry=False,
            purge=False,
            stats=True,
            progress=False,
            lookup=False,
            priorities=False,
            ordered=fifo,
            driven_clock=False,
            # A worker receives other names' messages too, and hides them for
            # others: they cost it a receive (and the message a receive count).
            claims_by_name=False,
            concurrent_claims=not fifo,
            strong_fencing=False,
            # FIFO queues take no per-message delay.
            max_delay=0.0 if fifo else float(MAX_DELAY),
            max_payload_bytes=MAX_MESSAGE_BYTES - _ENVELOPE,
            # A FIFO queue drops a repeated deduplication id for 5 minutes;
            # a standard queue has nothing of the kind.
            keys=fifo,
            key_window=300.0 if fifo else None,
            groups=fifo,
            hint=STORE_HINT,
        )

    def __repr__(self) -> str:
        return f"<SQSBackend {self.config.display}>"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        # Resolving the default queue checks credentials, the endpoint and
        # the queue (or creates it) before any job is taken.
        await self.sqs.queue_url(self.config.queue)

    async def close(self) -> None:
        await self.sqs.close()

    async def clock(self) -> float:
        return time.time()

    # Fork safety (conveyor/forking.py calls these): the child drops the
    # parent's HTTP clients and held receipts (the parent still uses them).
    def _before_fork(self) -> None:
        self._fork_hook("_before_fork")

    def _after_fork_in_parent(self) -> None:
        self._fork_hook("_after_fork_in_parent")

    def _after_fork_in_child(self) -> None:
        self.sqs.forget_clients()
        self._held = {}
        self._held_lock = threading.Lock()
        self._wakes = {}
        self._fork_hook("_after_fork_in_child")

    def _fork_hook(self, name: str) -> None:
        """The store's own fork hook, where there is a store."""

    def sqs_queue(self, queue: str) -> str:
        self._queues_seen.add(queue)
        return self.config.queue_name(queue)

    # ------------------------------------------------------------------ producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        now = time.time()
        by_queue: dict[str, list[Outgoing]] = defaultdict(list)
        records = []
        for new in jobs:
            delay = max(0.0, new.run_at - (new.created_at if new.relative else now))
            body = messages.job_body(new)
            size = messages.body_size(body)
            if size > MAX_MESSAGE_BYTES:
                raise InvalidPayloadError(
                    f"job {new.name!r} makes an SQS message of {size:,} bytes, over SQS's "
                    f"{MAX_MESSAGE_BYTES:,}: pass a reference to the data, or add a store "
                    "(?store=...), which keeps payloads and sends SQS only the job's id"
                )
            by_queue[self.sqs_queue(new.queue)].append(
                Outgoing(
                    new.id,
                    body,
                    min(MAX_DELAY, math.ceil(delay)),
                    *self._fifo_fields(new.id, new.key, new.queue, new.group),
                )
            )
            state = JobState.SCHEDULED if delay > 0 else JobState.QUEUED
            records.append(_record(new, state, now + delay))
        await self._send_all(by_queue)
        return records

    def _fifo_fields(
        self, job_id: str, dedup: str | None, queue: str, group: str | None
    ) -> tuple[str | None, str | None]:
        """MessageGroupId and MessageDeduplicationId, on a FIFO queue: the
        job's group, else the URL's group=, else one group per conveyor queue
        (strict order); the deduplication id is `dedup`, else the job's id."""
        if not self.config.fifo:
            return None, None
        return group or self.config.group or queue, dedup or job_id

    async def _send_all(self, by_queue: dict[str, list[Outgoing]]) -> None:
        """Send every queue's messages; raise naming each job that did not go out."""
        results = await asyncio.gather(
            *(self.sqs.send(name, out) for name, out in by_queue.items()),
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
                f"SQS did not take {len(failed)} of {sent + len(failed)} job(s), "
                f"which were not enqueued: {listed}{more}",
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
        # SQS long-polls in whole seconds, shared out across the queues: what
        # the polls leave of the timeout is a pause (cut short by
        # wake_waiter), then one more short poll, so an idle worker neither
        # spins nor oversleeps.
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
        hidden = visibility(lease)
        got: list[Received] = []
        share = wait // len(queues) if queues else 0
        for queue in queues:
            name = self.sqs_queue(queue)
            while len(got) < limit:
                batch = await self.sqs.receive(name, limit - len(got), share, hidden)
                got += batch
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
        for as long as SQS allows, for the redrive policy to move aside) and
        job types it has no handler for (hidden briefly, for other workers)."""
        wanted: list[tuple[Received, messages.Pointer]] = []
        aside: dict[str, list[tuple[str, int]]] = defaultdict(list)
        others: list[Received] = []
        for message in received:
            pointer = messages.parse(message.body)
            if pointer is None or (pointer.job is None) == self._bare_messages():
                logger.error(
                    "SQS queue %s: message %s is not a conveyor job (or not of this "
                    "backend's kind: with or without a store); left for the redrive policy",
                    message.queue,
                    message.message_id,
                )
                aside[message.queue].append((message.receipt, MAX_VISIBILITY))
            elif names is not None and pointer.name not in names:
                aside[message.queue].append((message.receipt, UNKNOWN_NAME_HIDE))
                others.append(message)
            else:
                wanted.append((message, pointer))
        for queue, changes in aside.items():
            await self.sqs.change_visibility(queue, changes)
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

    def _release_held(self, job_id: str, token: ClaimToken) -> Held | None:
        with self._held_lock:
            return self._held.pop((job_id, token), None)

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
            done = await self.sqs.change_visibility(
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
            done = await self.sqs.delete(queue, receipts)
            if not all(done):
                logger.warning(
                    "SQS queue %s: %d acknowledgement(s) refused (the message was "
                    "received again elsewhere); it will run again",
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
        extended = await self._set_visibility([(held, visibility(lease)) for _, held in live])
        if self._bare_messages():
            # Without a store, SQS alone judges the lease: a receipt it
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
        deletes: list[Held] = []
        changes: list[tuple[Held, int]] = []
        failed: list[tuple[Held, Outcome]] = []
        for outcome, ok in zip(outcomes, accepted, strict=True):
            held = self._release_held(outcome.job_id, outcome.token)
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
        """A retry's backoff is the message's visibility timeout: SQS allows
        12 hours from the receive, so a longer backoff is cut to that."""
        wait = outcome.retry_in
        if wait is None:
            wait = max(0.0, (outcome.run_at or time.time()) - time.time())
        left = MAX_VISIBILITY - (time.monotonic() - held.received_at) - 1
        changes.append((held, max(0, min(math.ceil(wait), int(left)))))

    async def _dead_letter(self, failed: Sequence[tuple[Held, Outcome]]) -> None:
        """A final failure goes to the queue's dead-letter queue (its redrive
        policy's target) with its error, so it can be redriven; without one
        it is dropped, said at WARNING."""
        for held, outcome in failed:
            dlq = await self.sqs.dead_letter_queue(held.queue)
            if dlq is None:
                logger.warning(
                    "SQS queue %s has no dead-letter queue: failed job %s is dropped",
                    held.queue,
                    outcome.job_id,
                )
                continue
            data = json.loads(held.body)
            data["attempts"] = int(data.get("attempts", 0)) + held.receives
            data["error"] = outcome.error
            data["failed_at"] = outcome.at
            group = data.get("group") or self.config.group or data.get("queue")
            out = Outgoing(entry_id=str(outcome.job_id), body=json.dumps(data))
            if dlq.endswith(".fifo"):
                out.group = str(group)
                out.dedup = f"{outcome.job_id}-failed-{held.receives}"
            failures = await self.sqs.send(dlq, [out])
            if failures:
                logger.error(
                    "SQS: failed job %s could not go to %s: %s", outcome.job_id, dlq, failures
                )

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
        # SQS brings a message back by itself when its visibility timeout
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
        return NotSupportedError(f"the sqs:// backend cannot {what} without a store; {STORE_HINT}")

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
        """SQS's approximate counts as states: visible messages are queued,
        in-flight ones running, delayed ones scheduled, and the dead-letter
        queue's messages failed."""
        out = {}
        for row in await self.broker_stats():
            dead = row.get("dead_letter_queue")
            out[str(row["conveyor_queue"])] = {
                JobState.SCHEDULED.value: int(row["ApproximateNumberOfMessagesDelayed"]),
                JobState.QUEUED.value: int(row["ApproximateNumberOfMessages"]),
                JobState.RUNNING.value: int(row["ApproximateNumberOfMessagesNotVisible"]),
                JobState.COMPLETED.value: 0,
                JobState.FAILED.value: int(dead["ApproximateNumberOfMessages"]) if dead else 0,
                JobState.CANCELLED.value: 0,
            }
        return out

    async def broker_stats(self) -> list[dict[str, Any]]:
        """Per conveyor queue this process has used: its SQS queue's name and
        approximate counts, and those of its dead-letter queue (None when it
        has none)."""
        rows: list[dict[str, Any]] = []
        for queue in sorted(self._queues_seen):
            name = self.config.queue_name(queue)
            try:
                counts: dict[str, Any] = await self.sqs.counts(name)
            except QueueMissingError:
                if queue == "default":
                    raise
                continue
            dlq = await self.sqs.dead_letter_queue(name)
            dead: dict[str, Any] | None = None
            if dlq is not None:
                dead = {"queue": dlq, **await self.sqs.counts(dlq)}
            rows.append(
                {"conveyor_queue": queue, "queue": name, **counts, "dead_letter_queue": dead}
            )
        return rows

    async def redrive(self, queue: str | None = None, limit: int | None = None) -> int:
        """Move messages from the dead-letter queue back to their queue for
        another round of attempts; how many moved."""
        moved = 0
        for conveyor_queue in [queue] if queue else sorted(self._queues_seen):
            name = self.sqs_queue(conveyor_queue)
            dlq = await self.sqs.dead_letter_queue(name)
            if dlq is None:
                continue
            while limit is None or moved < limit:
                batch = await self.sqs.receive(dlq, 10, 0, 60)
                if not batch:
                    break
                out = []
                for message in batch:
                    data = json.loads(message.body)
                    data.pop("error", None)
                    data.pop("failed_at", None)
                    # A fresh round: max_retries more attempts from here.
                    data["max_retries"] = int(data.get("max_retries", 0)) + int(
                        data.get("attempts", 0)
                    )
                    out.append(
                        Outgoing(
                            message.message_id,
                            json.dumps(data),
                            0,
                            *self._fifo_fields(
                                f"{data['id']}-redrive-{message.receives}-{uuid.uuid4().hex[:8]}",
                                None,
                                str(data.get("queue", conveyor_queue)),
                                data.get("group"),
                            ),
                        )
                    )
                failures = await self.sqs.send(name, out)
                await self.sqs.delete(
                    dlq, [m.receipt for m in batch if m.message_id not in failures]
                )
                moved += len(batch) - len(failures)
        return moved


def _record(new: NewJob, state: JobState, run_at: float) -> Job:
    return Job(
        id=new.id,
        name=new.name,
        queue=new.queue,
        payload=json.loads(new.payload),
        state=state,
        max_retries=new.max_retries,
        priority=new.priority,
        key=new.key,
        created_at=utc(new.created_at),
        run_at=utc(run_at),
        timeout=new.timeout,
    )
