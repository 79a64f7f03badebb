"""The `bullmq://` URL: where the Redis server is, which BullMQ queue
conveyor's default queue is, and BullMQ's key prefix.

    bullmq://[[user]:password@]host[:port][/db]?queue=<name>&prefix=bull

`queue` (default "default") is the BullMQ queue that conveyor's queue
"default" maps to; any other conveyor queue maps to the BullMQ queue of the
same name. `prefix` is BullMQ's own `prefix` option (default "bull"), so a
Node `new Queue(name, { prefix })` and conveyor meet on the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from conveyor.job import InvalidOptionError

KNOWN_OPTIONS = frozenset({"queue", "prefix"})
DEFAULT_QUEUE = "default"


@dataclass(frozen=True, slots=True)
class BullURL:
    redis_url: str  # the same server as a redis:// URL, for conveyor's RESP client
    queue: str  # the BullMQ queue of conveyor's queue "default"
    prefix: str  # BullMQ's key prefix

    def bull_queue(self, queue: str) -> str:
        """The BullMQ queue that conveyor's `queue` is stored in."""
        return self.queue if queue == DEFAULT_QUEUE else queue


def _check_name(what: str, value: str, url: str) -> str:
    # A ':' would make the queue's keys ambiguous with its jobs' keys.
    if not value or any(c in value for c in ": \n"):
        raise InvalidOptionError(f"bad BullMQ {what} {value!r} in {url!r} (no ':' or spaces)")
    return value


def parse_url(url: str) -> BullURL:
    parts = urlsplit(url)
    if parts.scheme != "bullmq":
        raise InvalidOptionError(f"not a BullMQ URL: {url!r} (expected bullmq://host:6379/0)")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise InvalidOptionError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in {url!r}; "
            f"known: {', '.join(sorted(KNOWN_OPTIONS))}"
        )
    queue = _check_name("queue", options.get("queue", DEFAULT_QUEUE), url)
    prefix = _check_name("prefix", options.get("prefix", "bull"), url)
    redis_url = urlunsplit(("redis", parts.netloc, parts.path, "", ""))
    return BullURL(redis_url=redis_url, queue=queue, prefix=prefix)
