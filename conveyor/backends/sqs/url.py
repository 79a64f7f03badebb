"""The SQS backend's URL.

    sqs://<queue-name>?region=..&endpoint_url=..&create=true&store=<conveyor URL>
    sqs+https://sqs.<region>.amazonaws.com/<account>/<queue-name>?store=...

The first form names the queue (its URL is looked up with GetQueueUrl); the
second is the queue's own URL with `sqs+` in front. `store=` comes last and
takes the rest of the URL as it is, so a store URL with options of its own
needs no escaping: `sqs://jobs?region=eu-west-1&store=redis://cache:6379/0?prefix=jobs`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor.backends.url_options import flag, split_store, whole_number
from conveyor.job import InvalidOptionError

OPTIONS: Final = frozenset(
    {
        "region",
        "endpoint_url",
        "create",
        "store",
        "dlq",
        "max_receives",
        "group",
        "profile",
        "wait",
    }
)
# SQS's own rule for queue names: up to 80 of these, `.fifo` included.
_QUEUE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,75}(\.fifo)?$")
FIFO_SUFFIX: Final = ".fifo"


@dataclass(frozen=True, slots=True)
class SQSURL:
    queue: str  # the SQS queue of conveyor's "default" queue
    queue_url: str | None  # given in the URL (sqs+https://...), else looked up
    region: str | None
    endpoint_url: str | None
    create: bool  # create the queue and its dead-letter queue when missing
    store: str | None  # the conveyor URL of the store, if any
    dlq: str | None  # the dead-letter queue's name, for create=true
    max_receives: int  # the redrive policy's maxReceiveCount, for create=true
    group: str | None  # FIFO: MessageGroupId of jobs enqueued without group=
    profile: str | None
    wait: int  # the longest long poll, seconds (SQS allows 0..20)
    display: str  # for messages: no credentials

    @property
    def fifo(self) -> bool:
        return self.queue.endswith(FIFO_SUFFIX)

    def queue_name(self, conveyor_queue: str) -> str:
        """The SQS queue of a conveyor queue: the URL's queue serves
        "default"; queue `emails` of `sqs://jobs` is `jobs-emails` (FIFO:
        `jobs-emails.fifo`)."""
        if conveyor_queue == "default":
            return self.queue
        base = self.queue.removesuffix(FIFO_SUFFIX)
        return f"{base}-{conveyor_queue}" + (FIFO_SUFFIX if self.fifo else "")

    def dlq_name(self, conveyor_queue: str) -> str:
        """The dead-letter queue create=true makes for a conveyor queue."""
        name = self.queue_name(conveyor_queue)
        if conveyor_queue == "default" and self.dlq:
            return self.dlq
        base = name.removesuffix(FIFO_SUFFIX)
        return f"{base}-dlq" + (FIFO_SUFFIX if self.fifo else "")


def parse_url(url: str) -> SQSURL:
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in ("sqs", "sqs+https", "sqs+http"):
        raise InvalidOptionError(f"not an SQS URL: {url!r}")
    where, _, query = rest.partition("?")
    query, store = split_store(query)
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in OPTIONS:
            raise InvalidOptionError(
                f"unknown option {name!r} in {url!r}; known: {', '.join(sorted(OPTIONS))}"
            )
        options[name] = value
    queue_url = None
    endpoint = options.get("endpoint_url") or None
    region = options.get("region") or None
    if scheme == "sqs":
        queue = unquote(where)
    else:
        # The queue's own URL: https://sqs.<region>.amazonaws.com/<account>/<name>.
        parts = urlsplit(f"{scheme.removeprefix('sqs+')}://{rest.partition('?')[0]}")
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) != 2 or not parts.hostname:
            raise InvalidOptionError(
                f"bad SQS queue URL in {url!r}: expected "
                "sqs+https://sqs.<region>.amazonaws.com/<account>/<queue-name>"
            )
        queue = segments[1]
        queue_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        endpoint = endpoint or f"{parts.scheme}://{parts.netloc}"
        found = re.match(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com", parts.hostname)
        region = region or (found.group(1) if found else None)
    if not _QUEUE_NAME.match(queue):
        raise InvalidOptionError(
            f"bad SQS queue name {queue!r} in {url!r}: up to 80 letters, digits, "
            "hyphens and underscores, FIFO queues ending in .fifo"
        )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise InvalidOptionError(
            f"no AWS region for {url!r}: add ?region=... or set AWS_REGION / AWS_DEFAULT_REGION"
        )
    if store is not None and store.partition("://")[0].lower().startswith("sqs"):
        raise InvalidOptionError(f"store={store!r} in {url!r}: a store cannot be an SQS queue")
    if store == "":
        raise InvalidOptionError(f"store= in {url!r} is empty: give a conveyor URL")
    dlq = options.get("dlq") or None
    fifo = queue.endswith(FIFO_SUFFIX)
    if dlq is not None and (not _QUEUE_NAME.match(dlq) or dlq.endswith(FIFO_SUFFIX) != fifo):
        raise InvalidOptionError(
            f"dlq={dlq!r} in {url!r}: a queue name, FIFO (.fifo) exactly when the queue is"
        )
    group = options.get("group") or None
    if group is not None and not fifo:
        raise InvalidOptionError(
            f"group={group!r} in {url!r}: message groups are for FIFO queues (names ending .fifo)"
        )
    return SQSURL(
        queue=queue,
        queue_url=queue_url,
        region=region,
        endpoint_url=endpoint,
        create=flag(url, "create", options.get("create", "false")),
        store=store,
        dlq=dlq,
        max_receives=whole_number(url, "max_receives", options.get("max_receives", "10"), 1, 1000),
        group=group,
        profile=options.get("profile") or None,
        wait=whole_number(url, "wait", options.get("wait", "20"), 0, 20),
        display=f"sqs://{queue}" + (f" at {endpoint}" if endpoint else f" in {region}"),
    )
