"""The Redis backend's key layout, URL and ready-set scores.

URL: `redis://[[user]:password@]host:port/db?prefix=conveyor` (or `rediss://`
for TLS, `unix:///path/to/redis.sock?db=0&prefix=conveyor`, or
`redis+sentinel://host:26379,.../service/db?prefix=conveyor`: url.py). All keys
start with the hash tag `{prefix}`, so on a Redis Cluster a deployment lives
in one slot and every script touches that slot only; run several prefixes to
spread several apps over shards.

Key layout (P = "{prefix}"; <pair> = "<bytes of queue>:<queue>:<job name>"):

    P:job:<id>              hash: the job's fields (payload/result/logs as JSON text)
    P:queued:<pair>         zset: queued jobs of one name in one queue, score
                            priority * 2^42 + due ms (ties: id)
    P:names:<queue>         set: job names that have queued jobs in the queue
    P:scheduled:<queue>     zset: delayed jobs and retries, score run_at
    P:running:<queue>       zset: claimed jobs, score lease expiry
    P:done:<queue>:<state>  zset: completed/failed/cancelled, in finishing order
    P:keys                  hash: idempotency key -> job id
    P:keyof                 hash: job id -> idempotency key (keyed jobs only)
    P:queues                set of queue names

    P:wakeup:<pair>         list: wake-up tokens, BLPOP-ed by idle workers serving that name
    P:wake-worker:<id>      list: ends one worker's blocking wait (stop)
    P:workers               hash: worker id -> presence record (JSON)
    P:workers:expires       zset: worker id, score the time its record expires (kept
                            STALE_WORKER_KEPT seconds longer, read as stale)
    P:paused                set: paused queues (workers leave them out of their claims)
    P:schedule:<name>       hash: a recurring schedule
    P:schedules:due         zset: enabled schedules, score next_run
    P:lock:<key>            string: the owner token, with a TTL
    P:cache:<key>           string: JSON, with a TTL

Every job sits in exactly one index of its queue, the one of its state, so
the indexes' sizes are the stats.

Layout change: queued jobs used to wait in one `P:ready:<queue>` zset (woken
through `P:wake:<queue>`); they now wait per job name, so a worker claims only
the names it has handlers for, in one round trip, whatever else is queued.
Queued jobs left in a `P:ready:<queue>` set by an older release are moved into
the per-name sets by the next claim on that queue (1,000 per claim), so an
upgrade needs no migration step; stats count them meanwhile. Run older and
newer releases on one prefix only while draining the old: older workers never
see jobs queued by newer code, and older admin commands miss them.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.backends.redis.url import SCHEMES, known_options
from conveyor.job import InvalidOptionError

PRIORITY_SPAN = 1 << 42  # as in library.lua
EPOCH_MS = 1735689600000


def ready_score(priority: int, run_at: float) -> int:
    """The ready-set score of library.lua's ready_score(), computed exactly."""
    return priority * PRIORITY_SPAN + math.floor(run_at * 1000) - EPOCH_MS


def pair_of(queue: str, name: str) -> str:
    """library.lua's pair(): Lua's # counts bytes, hence the encoding."""
    return f"{len(queue.encode())}:{queue}:{name}"


def server_time(seconds: str | int, micros: str | int) -> float:
    """A TIME reply as epoch seconds, the same float as library.lua's
    server_time() text gives."""
    return float(f"{int(seconds)}.{int(micros):06d}")


def parse_url(url: str) -> tuple[str, str]:
    """The URL for the client (without our options) and the key prefix tag."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise InvalidOptionError(f"not a Redis URL: {url!r}")
    known = known_options(parts.scheme)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidOptionError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in {url!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    prefix = options.pop("prefix", "conveyor")
    if not prefix or any(c in prefix for c in "{}: "):
        raise InvalidOptionError(f"bad Redis key prefix {prefix!r} in {url!r}")
    clean = urlunsplit(parts._replace(query=urlencode(options)))
    return clean, "{" + prefix + "}"
