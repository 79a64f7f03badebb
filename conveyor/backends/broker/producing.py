"""How a broker backend without a store enqueues: each job becomes a
message carrying the whole job, sent in batches per queue (on a FIFO
broker with its group and deduplication id); a refused send names the jobs
that did not go out."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Final

from conveyor.backends.base import NewJob
from conveyor.backends.broker import messages
from conveyor.backends.broker.types import BrokerClient, BrokerFacts, Outgoing
from conveyor.job import EnqueueFailedError, InvalidPayloadError, Job, JobState

# What a bare message adds around the payload, at most (ids, times, key).
_ENVELOPE: Final = 2_048


class BrokerProducing:
    """The producing half of `BrokerBackend` (which sets these attributes)."""

    broker: BrokerClient
    facts: BrokerFacts

    def broker_queue(self, queue: str) -> str:
        raise NotImplementedError

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
                "delivered some of its batch; with a store, those are withdrawn unless a worker"
                " has them already)",
                failed=sorted(failed),
            )
