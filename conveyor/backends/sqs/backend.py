"""The SQS backend without a store: the message is the job.

The job semantics are broker/bare.py's (`BrokerBackend`); this module says
what is SQS's: the client, the limits (12 hours of visibility, 15 minutes of
delay, 256 KiB messages), FIFO queues (groups, a 5-minute deduplication
window, strict order per group) and SQS's approximate counts as `stats`.
"""

from __future__ import annotations

from typing import Any, Final

from conveyor.backends.base import Capabilities
from conveyor.backends.broker.bare import BrokerBackend, Held, visibility
from conveyor.backends.broker.producing import _ENVELOPE
from conveyor.backends.broker.types import BrokerFacts
from conveyor.backends.sqs.client import MAX_DELAY, MAX_VISIBILITY, SQSClient
from conveyor.backends.sqs.url import SQSURL, parse_url
from conveyor.job import JobState

# SQS's largest message by default (a queue may be set lower or, on AWS, up
# to 1 MiB): a bare message carries the payload, so a larger one is refused.
MAX_MESSAGE_BYTES: Final = 262_144
STORE_HINT: Final = "add ?store=<a conveyor URL> (sqlite, redis or postgresql) to the SQS URL"

__all__ = ["MAX_MESSAGE_BYTES", "STORE_HINT", "Held", "SQSBackend", "sqs_facts", "visibility"]


def sqs_facts(config: SQSURL) -> BrokerFacts:
    fifo = config.fifo
    bare = Capabilities(
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
        # Nowhere to keep the set of paused queues: a store keeps it.
        pause=False,
        hint=STORE_HINT,
    )
    stored: dict[str, Any] = {
        # SQS delivers in its own order: no priorities.
        "priorities": False,
        "ordered": fifo,
        "driven_clock": False,
        "claims_by_name": False,
        "concurrent_claims": not fifo,
        "max_delay": None,
        "max_batch": None,
        "groups": fifo,
        "transactional_enqueue": False,
        "hint": "",
    }
    return BrokerFacts(
        name="SQS",
        scheme="sqs",
        max_visibility=MAX_VISIBILITY,
        max_delay=MAX_DELAY,
        max_message_bytes=MAX_MESSAGE_BYTES,
        counts=True,
        fifo=fifo,
        default_group=config.group,
        bare=bare,
        stored=stored,
        store_hint=STORE_HINT,
        dead_letter_rule="the redrive policy's maxReceiveCount",
    )


class SQSBackend(BrokerBackend):
    def __init__(self, url: str, **options: Any) -> None:
        config = parse_url(url)
        self.sqs = SQSClient(config)
        super().__init__(url, config, self.sqs, sqs_facts(config), **options)
        self.config: SQSURL = config

    def count_states(self, row: dict[str, Any]) -> dict[str, int]:
        """SQS's approximate counts as states: visible messages are queued,
        in-flight ones running, delayed ones scheduled, and the dead-letter
        queue's messages failed."""
        dead = row.get("dead_letter_queue")
        return {
            JobState.SCHEDULED.value: int(row["ApproximateNumberOfMessagesDelayed"]),
            JobState.QUEUED.value: int(row["ApproximateNumberOfMessages"]),
            JobState.RUNNING.value: int(row["ApproximateNumberOfMessagesNotVisible"]),
            JobState.COMPLETED.value: 0,
            JobState.FAILED.value: int(dead["ApproximateNumberOfMessages"]) if dead else 0,
            JobState.CANCELLED.value: 0,
        }
