"""conveyor's batch claim (batch_scripts.CLAIM) against BullMQ's moveToActive:
from the same queue state, one CLAIM call for n jobs must leave Redis as n
moveToActive calls do (every key, field, list order, score, TTL, and the
events QueueEvents reads) and answer the same jobs in the same order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bullmq_states import LOCK_MS, NOW, TOKEN, add, snapshot

from conveyor.backends.bullmq import BullMQBackend
from conveyor.backends.bullmq.calls import packed
from conveyor.backends.bullmq.layout import QueueKeys

pytestmark = pytest.mark.bullmq

Setup = Callable[[BullMQBackend, QueueKeys], Awaitable[None]]


async def waiting(backend: BullMQBackend, keys: QueueKeys, *ids: str) -> None:
    """Jobs in the wait list in the order BullMQ adds them (LPUSH: the
    first added is taken first, from the right end)."""
    for job_id in ids:
        await add(backend, keys, job_id)
        await backend._cmd("LPUSH", keys["wait"], job_id)


async def plain(backend: BullMQBackend, keys: QueueKeys) -> None:
    await waiting(backend, keys, "1", "2", "3", "4", "5")


async def mixed(backend: BullMQBackend, keys: QueueKeys) -> None:
    await waiting(backend, keys, "w1", "w2")
    for job_id, priority, order in (("p1", 5, 1), ("p2", 1, 2), ("p3", 5, 3)):
        await add(backend, keys, job_id, priority=priority)
        await backend._cmd("ZADD", keys["prioritized"], priority * 0x100000000 + order, job_id)
    await backend._cmd("SET", keys["pc"], 3)
    # Two delayed jobs due (one prioritized), one not yet.
    for job_id, due, priority in (("d1", NOW - 5, 0), ("d2", NOW, 2), ("d3", NOW + 60_000, 0)):
        await add(backend, keys, job_id, delay=1000, priority=priority)
        await backend._cmd("ZADD", keys["delayed"], due * 0x1000 + 1, job_id)


async def paused(backend: BullMQBackend, keys: QueueKeys) -> None:
    await plain(backend, keys)
    await backend._cmd("HSET", keys["meta"], "paused", 1)
    await add(backend, keys, "d1", delay=1000)
    await backend._cmd("ZADD", keys["delayed"], (NOW - 1) * 0x1000, "d1")


async def global_concurrency(backend: BullMQBackend, keys: QueueKeys) -> None:
    await plain(backend, keys)
    await backend._cmd("HSET", keys["meta"], "concurrency", 3)
    await add(backend, keys, "running")
    await backend._cmd("LPUSH", keys["active"], "running")


async def rate_limited(backend: BullMQBackend, keys: QueueKeys) -> None:
    await plain(backend, keys)
    await backend._cmd("HSET", keys["meta"], "max", 3, "duration", 60_000)
    # A deferred failure does not count towards the limit.
    await backend._cmd("HSET", keys.job("1"), "defa", "stalled")


async def limit_used_up(backend: BullMQBackend, keys: QueueKeys) -> None:
    await plain(backend, keys)
    await backend._cmd("HSET", keys["meta"], "max", 2, "duration", 60_000)
    await backend._cmd("SET", keys["limiter"], 2, "PX", 60_000)


async def legacy_marker(backend: BullMQBackend, keys: QueueKeys) -> None:
    await waiting(backend, keys, "1")
    await backend._cmd("RPUSH", keys["wait"], "0:1")  # an old worker's marker, at the right end
    await waiting(backend, keys, "2")


async def retried(backend: BullMQBackend, keys: QueueKeys) -> None:
    """Jobs claimed before (by Node's worker): their attempts go on from
    there, their start and worker name are replaced."""
    await plain(backend, keys)
    for job_id in ("4", "5"):
        job = keys.job(job_id)
        await backend._cmd("HSET", job, "ats", 2, "atm", 1, "processedOn", 5, "pb", "n")


async def orphan(backend: BullMQBackend, keys: QueueKeys) -> None:
    """An id in the wait list whose job hash is gone."""
    await waiting(backend, keys, "1")
    await backend._cmd("RPUSH", keys["wait"], "gone")


async def empty(backend: BullMQBackend, keys: QueueKeys) -> None:
    await backend._cmd("SET", keys["pc"], 7)  # dropped when the prioritized set is found empty


async def by_move_to_active(backend: BullMQBackend, keys: QueueKeys, n: int) -> list[Any]:
    opts = {"token": TOKEN, "lockDuration": LOCK_MS, "name": "conveyor"}
    call = backend.call(
        "moveToActive",
        keys.many("wait active prioritized events stalled limiter delayed paused meta pc marker"),
        [keys.base, NOW, packed(opts)],
    )
    replies = await backend.run([call] * n)
    return [[reply[0], reply[1]] for reply in replies if reply[0]]


async def by_claim(backend: BullMQBackend, keys: QueueKeys, n: int) -> list[Any]:
    call = backend.call(
        "claim",
        keys.many("wait active prioritized events limiter delayed meta pc marker"),
        [keys.base, NOW, TOKEN, LOCK_MS, "conveyor", n],
    )
    (taken,) = await backend.run([call])
    return [list(pair) for pair in taken]


@pytest.mark.parametrize(
    ("setup", "n"),
    [
        (plain, 3),
        (plain, 7),
        (mixed, 10),
        (mixed, 2),
        (paused, 3),
        (global_concurrency, 5),
        (rate_limited, 5),
        (limit_used_up, 3),
        (legacy_marker, 3),
        (empty, 2),
        (retried, 5),
        (orphan, 2),
    ],
)
async def test_one_claim_call_does_what_n_move_to_active_calls_do(
    bullmq_urls: Callable[[], str], setup: Setup, n: int
) -> None:
    backend = BullMQBackend(bullmq_urls())
    await backend.open()
    try:
        bull, ours = (
            QueueKeys(backend.config.prefix, "bull"),
            QueueKeys(backend.config.prefix, "ours"),
        )
        await setup(backend, bull)
        await setup(backend, ours)
        assert await snapshot(backend, bull) == await snapshot(backend, ours)
        expected = await by_move_to_active(backend, bull, n)
        got = await by_claim(backend, ours, n)
        # Replies name keys by the queue's base: compare without it.
        assert [[sorted(f), i] for f, i in got] == [[sorted(f), i] for f, i in expected]
        assert await snapshot(backend, ours) == await snapshot(backend, bull)
    finally:
        await backend.close()
