"""What goes over the wire to Pub/Sub: its limits, how an `Outgoing` becomes
a PubsubMessage, and how messages and ack ids are cut into requests.

Pub/Sub's limits: a Publish request carries at most 1,000 messages and
10 MB; a message's data at most 10 MB; an ordering key and an attribute's
value at most 1,024 bytes; an Acknowledge or ModifyAckDeadline request at
most 512 KiB; an ack deadline 0..600 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from conveyor.backends.broker.types import Outgoing

if TYPE_CHECKING:
    from google.pubsub_v1 import types

PUBLISH_MAX: Final = 1_000  # messages per Publish request
PUBLISH_MAX_BYTES: Final = 10_000_000  # bytes per Publish request (and per message)
MESSAGE_OVERHEAD: Final = 64  # what a message adds to a request besides its fields, at most
MAX_KEY_BYTES: Final = 1_024  # an ordering key, or an attribute's value
ACK_BATCH: Final = 1_000  # ack ids per Acknowledge / ModifyAckDeadline
ACK_BATCH_BYTES: Final = 400_000  # under Pub/Sub's 512 KiB request limit
MAX_ACK_DEADLINE: Final = 600
# Attributes: Pub/Sub has no delayed delivery and no deduplication, so what
# the sender asked for travels with the message.
# Seconds after its publish time (the server's clock) before which the
# message is hidden: relative, so a producer's clock does not move it.
DELAY: Final = "delay"
NOT_BEFORE: Final = "not_before"  # epoch seconds: what earlier releases sent
DEDUP: Final = "dedup"  # the sender's deduplication id


def clamp_deadline(seconds: float) -> int:
    """Pub/Sub takes ack deadlines of 0..600 s: a longer visibility is cut
    to 600 (a lease's heartbeat extends it again)."""
    return max(0, min(MAX_ACK_DEADLINE, math.ceil(seconds)))


def message_bytes(message: Outgoing) -> int:
    size = len(message.body.encode()) + len((message.group or "").encode())
    return size + len((message.dedup or "").encode()) + MESSAGE_OVERHEAD


def refused(message: Outgoing) -> str | None:
    """Why Pub/Sub would refuse this message, found before sending it (the
    emulator does not refuse an oversized publish: it stalls)."""
    if message_bytes(message) > PUBLISH_MAX_BYTES:
        return f"a message of {len(message.body.encode()):,} bytes: over Pub/Sub's 10 MB"
    if len((message.group or "").encode()) > MAX_KEY_BYTES:
        return "an ordering key (group) over Pub/Sub's 1,024 bytes"
    if len((message.dedup or "").encode()) > MAX_KEY_BYTES:
        return "a deduplication id over Pub/Sub's 1,024 bytes for an attribute value"
    return None


def publish_batches(messages: Sequence[Outgoing]) -> tuple[list[list[Outgoing]], dict[str, str]]:
    """(the Publish requests' messages, in order; {entry_id: why} for those
    Pub/Sub would refuse)."""
    refusals: dict[str, str] = {}
    batches: list[list[Outgoing]] = []
    size = 0
    for message in messages:
        why = refused(message)
        if why is not None:
            refusals[message.entry_id] = why
            continue
        grows = message_bytes(message)
        if not batches or len(batches[-1]) >= PUBLISH_MAX or size + grows > PUBLISH_MAX_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(message)
        size += grows
    return batches, refusals


def encode(message: Outgoing) -> types.PubsubMessage:
    from google.pubsub_v1 import types

    attributes = {}
    if message.dedup is not None:
        attributes[DEDUP] = message.dedup
    if message.delay > 0:
        attributes[DELAY] = str(message.delay)
    return types.PubsubMessage(
        data=message.body.encode(), attributes=attributes, ordering_key=message.group or ""
    )


def not_before(message: types.PubsubMessage) -> float:
    """When the message may be handed out (0: at once): its delay after the
    time Pub/Sub took it, so that only the worker's clock and the server's
    need agree, not the producer's too."""
    attributes = message.attributes
    try:
        if DELAY in attributes:
            return float(message.publish_time.timestamp()) + float(attributes[DELAY])
        return float(attributes.get(NOT_BEFORE, 0))
    except (ValueError, TypeError, AttributeError):  # not written by conveyor
        return 0.0


def ack_batches(ack_ids: Sequence[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    size = 0
    for ack_id in ack_ids:
        grows = len(ack_id) + 8
        if not batches or len(batches[-1]) >= ACK_BATCH or size + grows > ACK_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(ack_id)
        size += grows
    return batches
