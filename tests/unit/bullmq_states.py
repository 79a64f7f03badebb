"""Queue states built by hand in BullMQ's layout, and a snapshot of every
key of a queue: for the tests that run conveyor's batch scripts and BullMQ's
own on the same states and compare what they leave."""

from __future__ import annotations

from typing import Any

from conveyor.backends.bullmq import BullMQBackend
from conveyor.backends.bullmq.layout import QueueKeys

NOW = 1_800_000_000_000  # ms: the time both sides are given
TOKEN = "claim-token"
LOCK_MS = 30_000


async def add(backend: BullMQBackend, keys: QueueKeys, job_id: str, **fields: Any) -> None:
    values = {"name": "task", "data": "{}", "opts": "{}", "timestamp": NOW - 10, **fields}
    await backend._cmd("HSET", keys.job(job_id), *[x for kv in values.items() for x in kv])


async def snapshot(backend: BullMQBackend, keys: QueueKeys) -> dict[str, Any]:
    """Every key of the queue, by its name after the queue's base, with its
    value and whether it expires; the events stream without its entry ids."""
    found = await backend._cmd("KEYS", keys.base + "*")
    state: dict[str, Any] = {}
    for key in sorted(found):
        kind = await backend._cmd("TYPE", key)
        if kind == "hash":
            value: Any = sorted(zip(*[iter(await backend._cmd("HGETALL", key))] * 2, strict=True))
        elif kind == "list":
            value = await backend._cmd("LRANGE", key, 0, -1)
        elif kind == "zset":
            value = await backend._cmd("ZRANGE", key, 0, -1, "WITHSCORES")
        elif kind == "set":
            value = sorted(await backend._cmd("SMEMBERS", key))
        elif kind == "stream":
            value = [entry[1] for entry in await backend._cmd("XRANGE", key, "-", "+")]
        else:
            value = await backend._cmd("GET", key)
        ttl = await backend._cmd("PTTL", key)
        state[key.removeprefix(keys.base)] = (kind, value, ttl > 0)
    return state
