"""What the broker-independent backends need of a broker: its client's call
shapes (SQSClient's, which PubSubClient copies), the message types they pass,
and the few facts that differ between brokers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from conveyor.backends.base import Capabilities
from conveyor.job import BackendMisconfiguredError


@dataclass(slots=True)
class Outgoing:
    entry_id: str  # unique within its batch (the job id)
    body: str
    delay: int = 0
    group: str | None = None  # FIFO group / ordering key
    dedup: str | None = None  # FIFO deduplication id


@dataclass(slots=True)
class Received:
    queue: str  # the broker's name of the queue
    body: str
    receipt: str
    receives: int  # how many times the broker delivered it (at least 1)
    message_id: str


class BrokerClient(Protocol):
    async def queue_url(self, name: str) -> str: ...

    async def send(self, name: str, messages: Sequence[Outgoing]) -> dict[str, str]: ...

    async def receive(
        self, name: str, limit: int, wait: int, visibility: int
    ) -> list[Received]: ...

    async def change_visibility(
        self, name: str, changes: Sequence[tuple[str, int]]
    ) -> list[bool]: ...

    async def delete(self, name: str, receipts: Sequence[str]) -> list[bool]: ...

    async def counts(self, name: str) -> dict[str, Any]: ...

    async def dead_letter_queue(self, name: str) -> str | None: ...

    async def close(self) -> None: ...

    def forget_clients(self) -> None: ...


class BrokerConfig(Protocol):
    """What the backends read of a broker's parsed URL."""

    @property
    def queue(self) -> str: ...

    @property
    def store(self) -> str | None: ...

    @property
    def wait(self) -> int: ...

    @property
    def display(self) -> str: ...

    def queue_name(self, conveyor_queue: str) -> str: ...


@dataclass(frozen=True, slots=True)
class BrokerFacts:
    """What differs between brokers, beyond their client."""

    name: str  # for messages: "SQS", "Pub/Sub"
    scheme: str  # the URL scheme: "sqs", "pubsub"
    max_visibility: int  # the longest a received message can be hidden, seconds
    max_delay: int  # the longest native delay of a sent message, seconds
    max_message_bytes: int
    counts: bool  # the broker counts a queue's messages (`stats` without a store)
    fifo: bool  # messages carry a group and a deduplication id
    default_group: str | None  # the group of a job that names none (else its queue)
    bare: Capabilities  # what the backend declares without a store
    stored: dict[str, Any] = field(default_factory=dict)  # over the store's, with one
    # A retry is a new message (with its attempts in the body) rather than
    # the same message hidden for the backoff: where the broker cannot hide
    # a message long enough, or does not count deliveries.
    retry_by_republish: bool = False
    # A delayed message is delivered (and hidden again) when pulled before its
    # time, so its deliveries overcount its attempts (Pub/Sub's delay).
    early_pulls_count: bool = False
    store_hint: str = ""
    # What moves a message to the dead-letter queue, for a failed job's error.
    dead_letter_rule: str = "the dead-letter policy's most deliveries"


class QueueMissingError(BackendMisconfiguredError):
    """The named queue does not exist and create=true was not given."""
