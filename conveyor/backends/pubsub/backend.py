"""The Pub/Sub backend, bare (`pubsub://p/jobs`) or with a store
(`pubsub://p/jobs?store=<conveyor URL>`), on the broker seam of
conveyor/backends/broker: this module says what is Pub/Sub's.

* The lease is the ack deadline, at most 600 s (a longer lease is extended
  by the heartbeat, which beats well within it).
* Delays: Pub/Sub has none; a `delay` attribute (seconds after the publish
  time Pub/Sub stamps, wire.not_before) hides an early message
  when it is pulled, up to 600 s a pull (each pull a delivery attempt), so a
  bare backend declares delays up to 600 s. With a store, the store holds
  delayed jobs and retries and sends them when due: no limit.
* Retries without a store are new messages carrying the attempts made so
  far and the backoff as `delay`, since a message cannot be hidden
  longer than 600 s and Pub/Sub counts deliveries only where the
  subscription has a dead-letter policy. So a job's attempts are counted in
  the message, plus the delivery attempt of the current message where the
  subscription has a dead-letter policy (create=true sets one; a lease that
  ran out then counts), else plus one (a lease that ran out is not counted
  there: the dead-letter policy is what bounds a job that keeps crashing).
* No counts: bare `stats` is refused (add store=); with a store, the store
  counts.
* Keys need a store (Pub/Sub deduplicates nothing). Groups are ordering keys,
  only on a URL with ordered=true (the subscription is made with ordering).
* gRPC and fork do not mix: declared as fork_after_use=False.
"""

from __future__ import annotations

from typing import Any, Final

from conveyor.backends.base import Capabilities
from conveyor.backends.broker.bare import BrokerBackend
from conveyor.backends.broker.producing import _ENVELOPE
from conveyor.backends.broker.stored import StoredBrokerBackend
from conveyor.backends.broker.types import BrokerFacts
from conveyor.backends.pubsub.client import PubSubClient
from conveyor.backends.pubsub.url import PubSubURL, parse_url
from conveyor.backends.pubsub.wire import MAX_ACK_DEADLINE, MESSAGE_OVERHEAD, PUBLISH_MAX_BYTES

# A message's data, leaving room for its attributes and ordering key.
MAX_MESSAGE_BYTES: Final = PUBLISH_MAX_BYTES - 4 * 1_024 - MESSAGE_OVERHEAD
STORE_HINT: Final = "add &store=<a conveyor URL> (sqlite, redis or postgresql) to the pubsub:// URL"


def pubsub_facts(config: PubSubURL) -> BrokerFacts:
    ordered = config.ordered
    bare = Capabilities(
        list_jobs=False,
        cancel=False,
        retry=False,
        purge=False,
        # Pub/Sub cannot count a subscription's messages.
        stats=False,
        progress=False,
        lookup=False,
        priorities=False,
        ordered=ordered,
        driven_clock=False,
        # A worker pulls other names' messages too and hands them back.
        claims_by_name=False,
        # An ordering key's later messages wait while an earlier one is out.
        concurrent_claims=not ordered,
        strong_fencing=False,
        max_delay=float(MAX_ACK_DEADLINE),
        max_payload_bytes=MAX_MESSAGE_BYTES - _ENVELOPE,
        keys=False,
        groups=ordered,
        fork_after_use=False,
        # Nowhere to keep the set of paused queues: a store keeps it.
        pause=False,
        hint=STORE_HINT,
    )
    stored: dict[str, Any] = {
        "priorities": False,
        "ordered": ordered,
        "driven_clock": False,
        "claims_by_name": False,
        "concurrent_claims": not ordered,
        "max_delay": None,
        "max_batch": None,
        "groups": ordered,
        "transactional_enqueue": False,
        "fork_after_use": False,
        "hint": "",
    }
    return BrokerFacts(
        name="Pub/Sub",
        scheme="pubsub",
        max_visibility=MAX_ACK_DEADLINE,
        max_delay=2**31,  # a delay has no limit (each 600 s costs a delivery attempt)
        max_message_bytes=MAX_MESSAGE_BYTES,
        counts=False,
        # Ordering keys (the job's group, else its queue) and a dedup attribute.
        fifo=ordered,
        default_group=None,
        bare=bare,
        stored=stored,
        retry_by_republish=True,
        early_pulls_count=True,
        store_hint=STORE_HINT,
        dead_letter_rule="the subscription's dead-letter policy's max_delivery_attempts",
    )


class PubSubBackend(BrokerBackend):
    def __init__(self, url: str, **options: Any) -> None:
        config = parse_url(url)
        self.pubsub = PubSubClient(config)
        super().__init__(url, config, self.pubsub, pubsub_facts(config), **options)
        self.config: PubSubURL = config


class PubSubStoredBackend(StoredBrokerBackend):
    def __init__(self, url: str, **options: Any) -> None:
        config = parse_url(url)
        self.pubsub = PubSubClient(config)
        super().__init__(url, config, self.pubsub, pubsub_facts(config), **options)
        self.config: PubSubURL = config


def pubsub_backend(url: str, **options: Any) -> BrokerBackend:
    """The Pub/Sub backend for `url`: with its store when the URL names one."""
    if parse_url(url).store is not None:
        return PubSubStoredBackend(url, **options)
    return PubSubBackend(url, **options)
