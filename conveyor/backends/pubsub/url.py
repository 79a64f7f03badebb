"""The Pub/Sub backend's URL.

    pubsub://<project>/<topic>?subscription=..&create=true&ordered=true&dlq=..
        &max_deliveries=..&wait=..&endpoint=..&emulator=..&store=<conveyor URL>

Names, one topic and one subscription per conveyor queue:

* "default" is the URL's topic, read through `subscription=` (by default
  `<topic>-conveyor`);
* queue `emails` is topic `<topic>-emails`, read through
  `<subscription>-emails`;
* a queue's dead-letter topic is `<its topic>-dlq` (`dlq=` names the default
  queue's instead), read back through a subscription named by the same rule
  (`<subscription>-dlq`; a topic outside the `<topic>-` family gets
  `<that topic>-conveyor`), which create=true makes with it: Pub/Sub drops
  what is published to a topic nobody subscribes to.

`ordered=true` makes the work queues' subscriptions with message ordering
on (Pub/Sub cannot turn it on later), so messages with the same ordering key
(conveyor's group) are delivered in order. It is off by default: on the
emulator, an ordered subscription redelivers even messages without a key in
sequence, so one message hidden for a while holds back the redelivery of
those after it (Google's service leaves messages without a key unordered).

`store=` comes last and takes the rest of the URL as it is, so a store URL
with options of its own needs no escaping (as on the SQS URL).

The emulator: `emulator=host:port`, else $PUBSUB_EMULATOR_HOST (the variable
Google's client libraries honour), both read when the URL is parsed; conveyor
then speaks plain gRPC to it with no credentials. Otherwise credentials come
from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, the
metadata server, `gcloud auth application-default login`), and `endpoint=`
may name a regional endpoint (`europe-west1-pubsub.googleapis.com:443`),
which Google advises for ordering keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

from conveyor.backends.url_options import flag, host_port, split_url, whole_number
from conveyor.job import InvalidOptionError

OPTIONS: Final = frozenset(
    {
        "subscription",
        "create",
        "ordered",
        "store",
        "dlq",
        "max_deliveries",
        "wait",
        "endpoint",
        "emulator",
    }
)
EMULATOR_ENV: Final = "PUBSUB_EMULATOR_HOST"
DEFAULT_SUBSCRIPTION_SUFFIX: Final = "-conveyor"
DLQ_SUFFIX: Final = "-dlq"
# Google's rules. A project id: 6 to 30 lowercase letters, digits and
# hyphens, starting with a letter and not ending with a hyphen; older
# projects may be domain-scoped (`example.com:my-project`).
_PROJECT: Final = re.compile(r"^(?:[a-z0-9.-]+\.[a-z]{2,}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# Topic and subscription ids: 3 to 255 characters, starting with a letter,
# then letters, digits and `-_.~+%`; none may start with "goog".
_RESOURCE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$")
# Pub/Sub's bounds on a dead-letter policy's max_delivery_attempts.
MIN_DELIVERIES: Final = 5
MAX_DELIVERIES: Final = 100


def check_resource(kind: str, name: str, url: str) -> str:
    """`name` if Pub/Sub accepts it as a topic or subscription id."""
    if not _RESOURCE.match(name) or name.lower().startswith("goog"):
        raise InvalidOptionError(
            f"bad Pub/Sub {kind} name {name!r} for {url!r}: 3 to 255 letters, digits and "
            "-_.~+%, starting with a letter and not with 'goog'"
        )
    return name


@dataclass(frozen=True, slots=True)
class PubSubURL:
    project: str
    topic: str  # the topic of conveyor's "default" queue
    subscription: str  # the subscription "default" is read through
    create: bool  # create topics and subscriptions (with dead-letter topics) when missing
    ordered: bool  # subscriptions need (create=true: get) message ordering
    store: str | None  # the conveyor URL of the store, if any
    dlq: str | None  # the default queue's dead-letter topic, when not `<topic>-dlq`
    max_deliveries: int  # the dead-letter policy's max_delivery_attempts, for create=true
    wait: int  # the longest wait of one receive, seconds (as SQS's long poll)
    endpoint: str | None  # an API endpoint other than Google's global one
    emulator: str | None  # host:port of the Pub/Sub emulator
    display: str  # for messages: no credentials

    @property
    def queue(self) -> str:
        """The default queue's broker-side name (the name the client takes)."""
        return self.topic

    def queue_name(self, conveyor_queue: str) -> str:
        """The topic of a conveyor queue: the URL's serves "default"; queue
        `emails` of `pubsub://p/jobs` is `jobs-emails`."""
        if conveyor_queue == "default":
            return self.topic
        return check_resource("topic", f"{self.topic}-{conveyor_queue}", self.display)

    def dlq_name(self, conveyor_queue: str) -> str:
        """The dead-letter topic create=true makes for a conveyor queue."""
        if conveyor_queue == "default" and self.dlq:
            return self.dlq
        return check_resource("topic", self.queue_name(conveyor_queue) + DLQ_SUFFIX, self.display)

    def subscription_name(self, topic: str) -> str:
        """The subscription conveyor reads `topic` through."""
        if topic == self.topic:
            return self.subscription
        if topic.startswith(self.topic + "-"):
            name = self.subscription + topic[len(self.topic) :]
        else:
            name = topic + DEFAULT_SUBSCRIPTION_SUFFIX
        return check_resource("subscription", name, self.display)

    def conveyor_queue(self, topic: str) -> str | None:
        """The conveyor queue `topic` serves; None for a dead-letter topic
        (or one outside this URL's family)."""
        if topic == self.topic:
            return "default"
        if topic == self.dlq or topic.endswith(DLQ_SUFFIX):
            return None
        if topic.startswith(self.topic + "-"):
            return topic[len(self.topic) + 1 :]
        return None


def parse_url(url: str) -> PubSubURL:
    where, options, store = split_url(url, "pubsub", OPTIONS, "Pub/Sub")
    project, slash, topic = where.partition("/")
    if not slash or not topic or "/" in topic:
        raise InvalidOptionError(
            f"bad Pub/Sub URL {url!r}: expected pubsub://<project>/<topic>?..."
        )
    if not _PROJECT.match(project):
        raise InvalidOptionError(
            f"bad Google Cloud project id {project!r} in {url!r}: 6 to 30 lowercase letters, "
            "digits and hyphens, starting with a letter and not ending with a hyphen"
        )
    check_resource("topic", topic, url)
    subscription = check_resource(
        "subscription",
        options.get("subscription") or topic + DEFAULT_SUBSCRIPTION_SUFFIX,
        url,
    )
    dlq = options.get("dlq") or None
    if dlq is not None:
        check_resource("topic", dlq, url)
        if dlq == topic:
            raise InvalidOptionError(f"dlq={dlq!r} in {url!r}: the queue's own topic")
    if store == "":
        raise InvalidOptionError(f"store= in {url!r} is empty: give a conveyor URL")
    if store is not None and store.partition("://")[0].lower() == "pubsub":
        raise InvalidOptionError(f"store={store!r} in {url!r}: a store cannot be a Pub/Sub topic")
    emulator = options.get("emulator") or os.environ.get(EMULATOR_ENV) or None
    if emulator is not None:
        emulator = host_port(url, "emulator" if "emulator" in options else EMULATOR_ENV, emulator)
    endpoint = options.get("endpoint") or None
    if endpoint is not None:
        host_port(url, "endpoint", endpoint)
    where_shown = (
        f" (emulator at {emulator})" if emulator else (f" at {endpoint}" if endpoint else "")
    )
    return PubSubURL(
        project=project,
        topic=topic,
        subscription=subscription,
        create=flag(url, "create", options.get("create", "false")),
        ordered=flag(url, "ordered", options.get("ordered", "false")),
        store=store,
        dlq=dlq,
        max_deliveries=whole_number(
            url,
            "max_deliveries",
            options.get("max_deliveries", "10"),
            MIN_DELIVERIES,
            MAX_DELIVERIES,
        ),
        wait=whole_number(url, "wait", options.get("wait", "20"), 0, 20),
        endpoint=endpoint,
        emulator=emulator,
        display=f"pubsub://{project}/{topic}{where_shown}",
    )
