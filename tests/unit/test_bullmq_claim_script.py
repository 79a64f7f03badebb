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


async def many_due(backend: BullMQBackend, keys: QueueKeys) -> None:
    """More due delayed jobs than moveToActive promotes in one call: the
    urgent one, due last, is promoted before the second job is taken."""
    for n in range(1000):
        await add(backend, keys, f"d{n}", delay=1000, priority=5)
        await backend._cmd("ZADD", keys["delayed"], (NOW - 5000 + n) * 0x1000, f"d{n}")
    await add(backend, keys, "urgent", delay=1000, priority=1)
    await backend._cmd("ZADD", keys["delayed"], (NOW - 1) * 0x1000, "urgent")


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
        (many_due, 2),
        (many_due, 3),
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


async def by_claim_of(
    backend: BullMQBackend, keys: QueueKeys, n: int, names: list[str]
) -> list[str]:
    call = backend.call(
        "claim",
        keys.many("wait active prioritized events limiter delayed meta pc marker"),
        [keys.base, NOW, TOKEN, LOCK_MS, "conveyor", n, 1000, *names],
    )
    (taken,) = await backend.run([call])
    return [str(job_id) for _, job_id in taken]


async def served_behind_others(backend: BullMQBackend, keys: QueueKeys) -> None:
    """Right end of the wait list first: o1 (another name); prioritized: s1,
    s2 (the served name) and po (another name, the most urgent)."""
    await add(backend, keys, "o1", name="other")
    await backend._cmd("LPUSH", keys["wait"], "o1")
    for job_id, priority, order, name in (
        ("s1", 5, 1, "mine"),
        ("s2", 5, 2, "mine"),
        ("po", 1, 3, "other"),
    ):
        await add(backend, keys, job_id, name=name, priority=priority)
        await backend._cmd("ZADD", keys["prioritized"], priority * 0x100000000 + order, job_id)
    await backend._cmd("SET", keys["pc"], 3)


@pytest.mark.parametrize(
    ("held", "taken"),
    [("paused", []), ("at its concurrency", []), ("rate limit 1", ["s1"]), ("free", ["s1", "s2"])],
)
async def test_a_claim_by_name_moves_only_the_jobs_it_takes(
    bullmq_urls: Callable[[], str], held: str, taken: list[str]
) -> None:
    """A queue that lets the claim take fewer jobs than it wants (paused, at
    its global concurrency, near its rate limit) keeps the rest where they
    were: a served job moved to the wait list untaken would lose its
    priority, and a Node worker would run it ahead of more urgent jobs."""
    backend = BullMQBackend(bullmq_urls())
    await backend.open()
    try:
        keys = QueueKeys(backend.config.prefix, "q")
        await served_behind_others(backend, keys)
        if held == "paused":
            await backend._cmd("HSET", keys["meta"], "paused", 1)
        elif held == "at its concurrency":
            await backend._cmd("HSET", keys["meta"], "concurrency", 1)
            await add(backend, keys, "running")
            await backend._cmd("LPUSH", keys["active"], "running")
        elif held == "rate limit 1":
            await backend._cmd("HSET", keys["meta"], "max", 1, "duration", 60_000)
        before = await backend._cmd("ZRANGE", keys["prioritized"], 0, -1, "WITHSCORES")
        assert await by_claim_of(backend, keys, 2, ["mine"]) == taken
        assert await backend._cmd("LRANGE", keys["wait"], 0, -1) == ["o1"]
        left = await backend._cmd("ZRANGE", keys["prioritized"], 0, -1, "WITHSCORES")
        assert left == [
            member
            for pair in zip(before[::2], before[1::2], strict=True)
            if pair[0] not in taken
            for member in pair
        ]
    finally:
        await backend.close()


async def test_a_claim_by_name_with_a_due_job_takes_no_other_name(
    bullmq_urls: Callable[[], str],
) -> None:
    """A due delayed job is promoted before the claim looks for its names:
    the claim takes it if served, and never a job of another name that it
    would have to put back (counted by the rate limit, an 'active' event,
    the worker's name on a job that never ran here)."""
    backend = BullMQBackend(bullmq_urls())
    await backend.open()
    try:
        keys = QueueKeys(backend.config.prefix, "q")
        await backend._cmd("HSET", keys["meta"], "max", 3, "duration", 60_000)
        await add(backend, keys, "x", name="node-only")
        await backend._cmd("LPUSH", keys["wait"], "x")
        await add(backend, keys, "a", name="mine")
        await backend._cmd("RPUSH", keys["wait"], "a")  # right end: next
        await add(backend, keys, "d", name="mine", delay=1000)
        await backend._cmd("ZADD", keys["delayed"], (NOW - 5) * 0x1000, "d")
        assert await by_claim_of(backend, keys, 5, ["mine"]) == ["a", "d"]
        assert await backend._cmd("GET", keys["limiter"]) == "2"
        assert await backend._cmd("LRANGE", keys["wait"], 0, -1) == ["x"]
        assert await backend._cmd("HGET", keys.job("x"), "pb") is None
        events = [
            dict(zip(e[1][::2], e[1][1::2], strict=True))
            for e in await backend._cmd("XRANGE", keys["events"], "-", "+")
        ]
        assert not [e for e in events if e.get("jobId") == "x"]
    finally:
        await backend.close()
