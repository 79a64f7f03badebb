"""A broker backend without a store: the message is the job.

What the broker gives is used as it is: a batch send to enqueue, a (long)
poll to claim, the message's visibility (SQS's visibility timeout, Pub/Sub's
ack deadline) as the lease, extended by the heartbeat, a delete (ack) to
acknowledge, the visibility again for a retry's backoff (or, where the broker
cannot hide a message long enough, the message published again with its
attempts and a delay), and the broker's dead-letter queue. What a broker
cannot do (look a job up, list, cancel, keep a result) is refused with a hint
to add a store; `stored.py` builds on this class when there is one.

On a FIFO broker a receive's later messages of a group are held back here
until the one before them is settled (groups.py), so that a group's jobs run
one at a time, in order. Enqueueing is producing.py's; the refusals and the
broker's counts are inspecting.py's.

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
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    Outcome,
    OutcomeKind,
    Retention,
)
from conveyor.backends.broker import dead_letters, messages
from conveyor.backends.broker.groups import Chosen, GroupGate
from conveyor.backends.broker.inspecting import BrokerInspection
from conveyor.backends.broker.producing import BrokerProducing
from conveyor.backends.broker.types import (
    BrokerClient,
    BrokerConfig,
    BrokerFacts,
    Received,
)
from conveyor.job import (
    Job,
)

logger = logging.getLogger("conveyor.broker")

# How long a message of a job type this worker cannot run stays hidden from
# it, so workers that can run it get their turn.
UNKNOWN_NAME_HIDE: Final = 2
# While a group's message is out, a claim skips its receive when one on its
# queues came back empty this recently (seconds; see `_receive_can_wait`).
RECEIVE_GAP: Final = 0.25


@dataclass(slots=True)
class Held:
    """A message this process received and has not acknowledged yet."""

    queue: str  # the broker's name of the queue
    receipt: str
    body: str
    receives: int
    received_at: float  # time.monotonic()
    # Its message's successor went out (a republished retry, or the dead
    # letter of a failed job): a finish sent again, after a later broker call
    # of the batch failed, must not send it twice (the job would run twice).
    sent: bool = False


def visibility(seconds: float, most: int) -> int:
    return max(1, min(most, math.ceil(seconds)))


class BrokerBackend(BrokerProducing, BrokerInspection):
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
        self._empty_at: dict[str, float] = {}  # per conveyor queue: its last empty receive
        # FIFO: a receive's later messages of a group, held until the one
        # before them is settled (groups.py).
        self._gate = GroupGate(self._group_of)
        # Held messages the gate gave up (their head went back) that a failed
        # finish could not make visible yet: the next finish does. (The gate
        # hands them out once; dropped, they would stay hidden for their
        # whole lease, holding up their group.)
        self._unhidden_later: list[Held | Received] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config.display}>"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        # Resolving the default queue checks credentials, the endpoint and
        # the queue (or creates it) before any job is taken.
        await self.broker.queue_url(self.config.queue)

    async def close(self) -> None:
        try:
            await self.release_held()
        except Exception as exc:  # they come back when their visibility ends
            logger.warning("%r: could not give back held messages at close: %s", self, exc)
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
        self._gate = GroupGate(self._group_of)
        self._unhidden_later = []
        self._fork_hook("_after_fork_in_child")

    def _fork_hook(self, name: str) -> None:
        """The store's own fork hook, where there is a store."""

    def broker_queue(self, queue: str) -> str:
        self.queues_seen.add(queue)
        return self.config.queue_name(queue)

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
        received: list[Received] = []
        ready = self._gate.ready()
        if not self._receive_can_wait(queues):
            received = await self._receive(queues, limit - ready, 0, lease)
        return await self._take(received, lease, claim_id or uuid.uuid4().hex, names, now, limit)

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
        ready = self._gate.ready()
        received: list[Received] = []
        asked = True
        if self._gate.busy():
            # A group's message is out: once it is settled, the group's next
            # one is held here or on the broker, and a long poll could not be
            # cut short for it: `finish` sets `wake` instead.
            wait = 0
            asked = not self._receive_can_wait(queues)
            if asked:
                received = await self._receive(queues, limit - ready, 0, lease)
        else:
            received = await self._receive(queues, limit, wait, lease)
        left = deadline - time.monotonic()
        # Without asking the broker, the whole timeout is waited out, however
        # short, or an idle worker would spin.
        waits = left > 0.05 or (not asked and left > 0)
        if not received and not ready and waits and not wake.is_set():
            try:
                async with asyncio.timeout(left):
                    await wake.wait()
            except TimeoutError:
                pass
            ready = self._gate.ready()
            if not ready or not self._receive_can_wait(queues):
                received = await self._receive(queues, limit - ready, 0, lease)
        return await self._take(received, lease, claim_id or uuid.uuid4().hex, names, None, limit)

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
        if limit > 0:
            self._gate.freed = False
        for queue in queues:
            name = self.broker_queue(queue)
            while len(got) < limit:
                batch = await self.broker.receive(name, limit - len(got), share, hidden)
                got += batch
                self.came_back_empty[queue] = not batch
                if not batch:
                    self._empty_at[queue] = time.monotonic()
                share = 0
                if len(batch) < 10:
                    break
        return got

    def _receive_can_wait(self, queues: Sequence[str]) -> bool:
        """Whether a claim may skip its receive: a group's message is out
        here (held ones are handed out as they come due), no group went back
        to the broker since, and a receive on these queues came back empty
        a moment ago. A group's jobs in a row then cost no receive each."""
        if not self._gate.busy() or self._gate.freed:
            return False
        since = time.monotonic() - RECEIVE_GAP
        return all(self._empty_at.get(queue, 0.0) > since for queue in queues)

    async def _take(
        self,
        received: list[Received],
        lease: float,
        claim_id: str,
        names: Sequence[str] | None,
        now: float | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        chosen = await self._choose(received, names, lease, claim_id, limit)
        if not chosen:
            return []
        return await self._lease(chosen, lease, claim_id, now)

    async def _lease(
        self, chosen: list[Chosen], lease: float, claim_id: str, now: float | None
    ) -> list[Job]:
        """The jobs of the chosen messages, each held under `claim_id`."""
        jobs = []
        for message, pointer, received_at in chosen:
            assert pointer.job is not None
            job = messages.bare_job(pointer.job, message.receives, claim_id, now)
            self._hold(job.id, claim_id, message, received_at)
            jobs.append(job)
        return jobs

    async def _choose(
        self,
        received: list[Received],
        names: Sequence[str] | None,
        lease: float,
        claim_id: str,
        limit: int | None,
    ) -> list[Chosen]:
        """The messages to hand out, in order: on a FIFO broker, the heads
        of their groups (earlier receives' held messages whose turn came
        first), the rest held (groups.py). Set aside: foreign bodies (hidden
        for as long as the broker allows, for the redrive policy to move
        aside) and job types this worker has no handler for (hidden briefly,
        for other workers; on a FIFO broker with their group's held messages
        made visible behind them, so the group comes back in order)."""
        now = time.monotonic()
        hidden = visibility(lease, self.facts.max_visibility)
        changes: list[tuple[Held | Received, int]] = []
        parsed: list[tuple[Received, messages.Pointer]] = []
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
                changes.append((message, self.facts.max_visibility))
            else:
                parsed.append((message, pointer))
        if self.facts.fifo:
            room = len(received) if limit is None else limit
            chosen, moved = self._gate.choose(parsed, claim_id, lease, hidden, room)
            changes += moved
        else:
            chosen = [(message, pointer, now) for message, pointer in parsed]
        wanted: list[Chosen] = []
        for message, pointer, received_at in chosen:
            if names is not None and pointer.name not in names:
                changes.append((message, UNKNOWN_NAME_HIDE))
                changes += [(w.message, 0) for w in self._gate.back(pointer.id, claim_id)]
            else:
                wanted.append((message, pointer, received_at))
        await self._set_visibility(changes)
        return wanted

    def _group_of(self, pointer: messages.Pointer) -> str:
        """A message's FIFO group, as `fifo_fields` gave it."""
        return pointer.group or self.facts.default_group or pointer.queue

    def _bare_messages(self) -> bool:
        return True

    def _hold(self, job_id: str, token: ClaimToken, message: Received, received_at: float) -> None:
        with self._held_lock:
            self._held[(job_id, token)] = Held(
                message.queue, message.receipt, message.body, message.receives, received_at
            )

    def _held_of(self, job_id: str, token: ClaimToken) -> Held | None:
        with self._held_lock:
            return self._held.get((job_id, token))

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        with self._held_lock:
            mine = [key for key in self._held if key[1] == claim_id]
            held = [self._held.pop(key) for key in mine]
        behind = self._gate.back_of_claim(claim_id)
        await self._set_visibility([(h, 0) for h in held] + [(w.message, 0) for w in behind])
        return len(held)

    async def release_held(self) -> int:
        """Give back the messages held for groups with no job out (a worker
        stops; see groups.py), visible at once, so that any worker takes
        them, in order. Those behind a job still out stay with it."""
        released = self._gate.release_ready()
        await self._set_visibility([(w.message, 0) for w in released])
        return len(released)

    async def _set_visibility(self, changes: Sequence[tuple[Held | Received, int]]) -> list[bool]:
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
        hidden = visibility(lease, self.facts.max_visibility)
        self._gate.beaten((beats[index].job_id, beats[index].token) for index, _ in live)
        lost = [
            (b.job_id, b.token)
            for b, s in zip(beats, statuses, strict=True)
            if s is LeaseStatus.LOST
        ]
        extended = await self._set_visibility(
            [(held, hidden) for _, held in live] + self._held_upkeep(lost, lease)
        )
        if self._bare_messages():
            # Without a store, the broker alone judges the lease: a receipt it
            # refuses (the message came back and went to another) is lost.
            refused = []
            for (index, _), ok in zip(live, extended[: len(live)], strict=True):
                if not ok:
                    statuses[index] = LeaseStatus.LOST
                    refused.append((beats[index].job_id, beats[index].token))
            if refused:
                await self._set_visibility(self._held_upkeep(refused, None))
        return statuses

    def _held_upkeep(
        self, lost: Sequence[tuple[str, ClaimToken]], lease: float | None
    ) -> list[tuple[Held | Received, int]]:
        """The visibility changes that keep a heartbeat's held messages
        (groups.py): the tails of lost heads visible at once; with a
        `lease`, the overdue too, and the rest hidden for it again."""
        hidden = None if lease is None else visibility(lease, self.facts.max_visibility)
        return list(self._gate.upkeep(lost, lease, hidden))

    async def _store_heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None
    ) -> list[LeaseStatus]:
        return [LeaseStatus.HELD for _ in beats]

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        accepted = await self._store_finish(outcomes, retention)
        keys = [(o.job_id, o.token) for o in outcomes]
        with self._held_lock:
            self._applied.update(key for key, ok in zip(keys, accepted, strict=True) if ok)
        # Held messages of groups going back (with those an earlier finish
        # could not give back).
        behind: list[tuple[Held | Received, int]] = [(m, 0) for m in self._unhidden_later]
        self._unhidden_later = []
        try:
            settled = await self._finish_on_broker(outcomes, accepted, behind)
        except BaseException:
            self._unhidden_later += [message for message, _ in behind]
            raise
        with self._held_lock:
            for key in keys:
                self._held.pop(key, None)
                self._applied.discard(key)
        if any([self._gate.settled(*head) for head in settled]):
            self._wake_all()
        return accepted

    async def _finish_on_broker(
        self,
        outcomes: Sequence[Outcome],
        accepted: Sequence[bool],
        behind: list[tuple[Held | Received, int]],
    ) -> list[tuple[str, ClaimToken]]:
        """finish's broker calls; the heads whose message is deleted (their
        group's next may go). `behind` is emptied once given back."""
        deletes: list[Held] = []
        changes: list[tuple[Held, int]] = []
        failed: list[tuple[Held, Outcome]] = []
        settled = []
        for outcome, ok in zip(outcomes, accepted, strict=True):
            # Still held until the broker calls below are done: if one of
            # them fails, the worker sends the batch again and it is redone.
            held = self._held_of(outcome.job_id, outcome.token)
            if held is None or not ok:
                behind += [(w.message, 0) for w in self._gate.back(outcome.job_id, outcome.token)]
                continue
            hidden = len(changes)
            if outcome.kind is OutcomeKind.QUEUED:
                changes.append((held, 0))
            elif outcome.kind is OutcomeKind.SCHEDULED:
                await self._retry_message(held, outcome, deletes, changes)
            else:
                if outcome.kind is OutcomeKind.FAILED and self._bare_messages():
                    failed.append((held, outcome))
                deletes.append(held)
            if len(changes) > hidden:
                # Its message goes back to the broker (handed back, or hidden
                # for a retry's backoff): so do those held behind it, visible
                # at once; the broker holds them back while it is hidden.
                behind += [(w.message, 0) for w in self._gate.back(outcome.job_id, outcome.token)]
            else:
                settled.append((outcome.job_id, outcome.token))
        if failed:
            kept = {id(held) for held in await self._dead_letter(failed)}
            deletes = [held for held in deletes if id(held) not in kept]
        await self._set_visibility(changes + behind)
        behind.clear()  # given back
        await self._delete(deletes)
        return settled

    def _wake_all(self) -> None:
        """A group's message was settled: a blocking claim takes the next now."""
        for wake in self._wakes.values():
            wake.set()

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
            if not held.sent:
                await self._republish(held, outcome, math.ceil(wait))
                held.sent = True
            deletes.append(held)
            return
        changes.append((held, max(0, min(math.ceil(wait), int(left)))))

    async def _republish(self, held: Held, outcome: Outcome, delay: int) -> None:
        await dead_letters.republish(self, held, outcome, delay)

    async def _dead_letter(self, failed: Sequence[tuple[Held, Outcome]]) -> list[Held]:
        """The held messages whose dead-letter send failed (kept, not deleted)."""
        return await dead_letters.send_failed(self, failed)

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

    async def redrive(self, queue: str | None = None, limit: int | None = None) -> int:
        """Move messages from the dead-letter queue back to their queue for
        another round of attempts; how many moved."""
        return await dead_letters.redrive(self, queue, limit)
