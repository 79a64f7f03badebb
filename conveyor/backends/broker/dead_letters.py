"""A bare broker backend's messages sent again: a final failure to the
queue's dead-letter queue with its error, `redrive` moving them back, and a
retry republished."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.backends.base import Outcome
from conveyor.backends.broker import messages
from conveyor.backends.broker.types import Outgoing
from conveyor.job import EnqueueFailedError

if TYPE_CHECKING:
    from conveyor.backends.broker.bare import BrokerBackend, Held

logger = logging.getLogger("conveyor.broker")


async def send_failed(backend: BrokerBackend, failed: Sequence[tuple[Held, Outcome]]) -> list[Held]:
    """A final failure goes to the queue's dead-letter queue (its redrive
    policy's target) with its error, so it can be redriven; without one it
    is dropped, said at WARNING. Returns those whose send failed: their
    messages must stay (the caller does not delete them), so the job is not
    lost: delivered again, it fails again or the redrive policy moves it."""
    facts = backend.facts
    unsent: list[Held] = []
    for held, outcome in failed:
        if held.sent:  # by an earlier try of this finish
            continue
        dlq = await backend.broker.dead_letter_queue(held.queue)
        if dlq is None:
            logger.warning(
                "%s queue %s has no dead-letter queue: failed job %s is dropped",
                facts.name,
                held.queue,
                outcome.job_id,
            )
            continue
        data = json.loads(held.body)
        data["attempts"] = messages.attempts_of(data, held.receives)
        data.pop(messages.COUNT_RECEIVES, None)
        data["error"] = outcome.error
        data["failed_at"] = outcome.at
        group = data.get("group") or facts.default_group or data.get("queue")
        out = Outgoing(entry_id=str(outcome.job_id), body=json.dumps(data))
        if facts.fifo:
            out.group = str(group)
            out.dedup = f"{outcome.job_id}-failed-{held.receives}"
        failures = await backend.broker.send(dlq, [out])
        held.sent = not failures
        if failures:
            unsent.append(held)
            logger.error(
                "%s: failed job %s could not go to %s (%s); its message stays on %s,"
                " to be delivered again once its lease ends",
                facts.name,
                outcome.job_id,
                dlq,
                failures,
                held.queue,
            )
    return unsent


async def redrive(backend: BrokerBackend, queue: str | None, limit: int | None) -> int:
    """Move messages from the dead-letter queue back to their queue for
    another round of attempts; how many moved."""
    moved = 0
    for conveyor_queue in [queue] if queue else sorted(backend.queues_seen):
        name = backend.broker_queue(conveyor_queue)
        dlq = await backend.broker.dead_letter_queue(name)
        if dlq is None:
            continue
        while limit is None or moved < limit:
            batch = await backend.broker.receive(dlq, 10, 0, 60)
            if not batch:
                break
            out = []
            for message in batch:
                data = json.loads(message.body)
                data.pop("error", None)
                data.pop("failed_at", None)
                # A fresh round: max_retries more attempts from here.
                data["max_retries"] = int(data.get("max_retries", 0)) + int(data.get("attempts", 0))
                out.append(
                    Outgoing(
                        message.message_id,
                        json.dumps(data),
                        0,
                        *backend.fifo_fields(
                            f"{data['id']}-redrive-{message.receives}-{uuid.uuid4().hex[:8]}",
                            None,
                            str(data.get("queue", conveyor_queue)),
                            data.get("group"),
                        ),
                    )
                )
            failures = await backend.broker.send(name, out)
            await backend.broker.delete(
                dlq, [m.receipt for m in batch if m.message_id not in failures]
            )
            moved += len(batch) - len(failures)
    return moved


async def republish(backend: BrokerBackend, held: Held, outcome: Outcome, delay: int) -> None:
    """A retry as a new message: the job's attempts so far in its body, the
    backoff as its delay (where the broker cannot hide the old message long
    enough, or would not count its redelivery)."""
    data = json.loads(held.body)
    data["attempts"] = messages.attempts_of(data, held.receives)
    if delay > 0 and backend.facts.early_pulls_count:
        data[messages.COUNT_RECEIVES] = False
    else:
        data.pop(messages.COUNT_RECEIVES, None)
    out = Outgoing(
        str(outcome.job_id),
        json.dumps(data),
        delay,
        *backend.fifo_fields(
            str(outcome.job_id),
            f"{outcome.job_id}-{data['attempts']}",
            str(data.get("queue")),
            data.get("group"),
        ),
    )
    failures = await backend.broker.send(held.queue, [out])
    if failures:
        # The old message is kept (not deleted): it comes back when its
        # visibility ends, and the job runs again sooner than asked.
        raise EnqueueFailedError(
            f"{backend.facts.name}: the retry of job {outcome.job_id} was not sent: {failures}",
            failed=[str(outcome.job_id)],
        )
