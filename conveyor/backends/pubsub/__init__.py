"""Google Cloud Pub/Sub: a topic and a subscription per conveyor queue.

`pubsub://<project>/<topic>?subscription=...&create=true` (url.py) names
them; backend.py is the backend (`pubsub_backend`, bare or with store=);
`PubSubClient` (client.py) makes the broker calls in the shape of the
SQS backend's `SQSClient` (the same `Outgoing` and `Received`), so the job
semantics above it can run over either broker. Needs the `gcp` extra
(google-cloud-pubsub).

What gcloud's emulator (pubsub-emulator 0.8.20) does, as tried against it
(tests/unit/test_pubsub_client.py checks the parts conveyor relies on):

* Dead-letter policies work: after max_delivery_attempts deliveries the
  message moves to the dead-letter topic, carrying the
  CloudPubSubDeadLetterSource* attributes (source subscription, delivery
  count, publish time).
* delivery_attempt is counted only on a subscription with a dead-letter
  policy (1, 2, ...); without one it is 0, as Google documents.
* Ordering keys work: a key's later messages are held back while an earlier
  one is out, and a nack redelivers the key's messages in order. But on a
  subscription with ordering on, messages without a key are redelivered in
  sequence too (one kept hidden holds back the redelivery of those after
  it), where Google leaves them unordered: hence ordered= is off by default.
* A Pull without return_immediately waits for a message and answers as
  soon as one is published; with nothing to give it answers empty about a
  second before its gRPC deadline (at once for a deadline of 1 s or less)
  instead of failing with DEADLINE_EXCEEDED. return_immediately still
  works, but the client library warns that it is deprecated.
* An ack deadline over 600 s is accepted (Google refuses it); an ack id it
  never issued fails the whole Acknowledge or ModifyAckDeadline with
  INVALID_ARGUMENT, while an expired or already used one is accepted.
* More than 1,000 messages in one Publish is refused (INVALID_ARGUMENT); a
  Publish over 10 MB is not refused but stalls until the deadline.
* No message counts: neither Pub/Sub's API nor the emulator has them (Cloud
  Monitoring does, on Google's service).
* The client library's own emulator channel (PUBSUB_EMULATOR_HOST) keeps
  gRPC's 4 MB receive limit, so a Pull of large messages fails there;
  conveyor makes its own channel without it.

gRPC and fork: a child forked after the parent used a gRPC channel hangs or
crashes (SIGSEGV) on its first call, even with the parent's channels closed
and GRPC_ENABLE_FORK_SUPPORT set. A child forked before the parent's first
Pub/Sub call works: fork workers before using the backend, or spawn them.
"""

from __future__ import annotations

from conveyor.backends.pubsub.backend import PubSubBackend, PubSubStoredBackend, pubsub_backend
from conveyor.backends.pubsub.client import PubSubClient, QueueMissingError
from conveyor.backends.pubsub.url import PubSubURL, parse_url

__all__ = [
    "PubSubBackend",
    "PubSubClient",
    "PubSubStoredBackend",
    "PubSubURL",
    "QueueMissingError",
    "parse_url",
    "pubsub_backend",
]
