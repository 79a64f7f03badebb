"""conveyor's batch completion (batch_scripts.FINISH) against BullMQ's
moveToFinished: from the same queue state, one FINISH call (and, for the
jobs it leaves to BullMQ, moveToFinished as the backend then sends it) must
leave Redis as one moveToFinished per job does, with the same answers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bullmq_states import NOW, TOKEN, add, snapshot

from conveyor.backends.bullmq import BullMQBackend
from conveyor.backends.bullmq.batch_scripts import LINKED
from conveyor.backends.bullmq.layout import HISTORY, QueueKeys

pytestmark = pytest.mark.bullmq

Setup = Callable[[BullMQBackend, QueueKeys], Awaitable[list[str]]]
UPDATES = {"progress": "100", HISTORY: '[{"attempt": 1}]'}


async def running(backend: BullMQBackend, keys: QueueKeys, *ids: str, **fields: Any) -> None:
    """Jobs a claim with TOKEN took (as moveToActive leaves them)."""
    for job_id in ids:
        await add(backend, keys, job_id, processedOn=NOW - 5, ats=1, pb="conveyor", **fields)
        await backend._cmd("LPUSH", keys["active"], job_id)
        await backend._cmd("SET", keys.job(job_id) + ":lock", TOKEN, "PX", 30_000)


async def completed_before(backend: BullMQBackend, keys: QueueKeys, *ids: str) -> None:
    for n, job_id in enumerate(ids):
        await add(backend, keys, job_id, finishedOn=NOW - 1000 + n, returnvalue="1")
        await backend._cmd("ZADD", keys["completed"], NOW - 1000 + n, job_id)
        await backend._cmd("RPUSH", keys.job(job_id) + ":logs", "a line")


async def three(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    await running(backend, keys, "a", "b", "c")
    await backend._cmd("SADD", keys["stalled"], "a", "b")  # marked by a stalled check
    await add(backend, keys, "w")
    await backend._cmd("LPUSH", keys["wait"], "w")  # so no "drained" yet
    return ["a", "b", "c"]


async def draining(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    await running(backend, keys, "a", "b")
    await backend._cmd("HSET", keys["meta"], "opts.maxLenEvents", 500)
    return ["a", "b"]


async def trimmed(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    await completed_before(backend, keys, "o1", "o2", "o3", "o4")
    await running(backend, keys, "a", "b", "c")
    return ["a", "b", "c"]


async def trimmed_child(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    """The trim removes a completed child its parent (in another queue, in
    waiting-children) still counts: the parent is released."""
    parent = QueueKeys(keys.prefix, keys.queue + "-parents")
    await add(backend, parent, "p")
    await backend._cmd("ZADD", parent["waiting-children"], NOW - 2000, "p")
    await backend._cmd("SADD", parent.job("p") + ":dependencies", keys.job("o1"))
    await completed_before(backend, keys, "o1", "o2")
    await backend._cmd("HSET", keys.job("o1"), "parentKey", parent.job("p"))
    await running(backend, keys, "a")
    return ["a"]


async def trimmed_child_here(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    """As trimmed_child, with the parent in the same queue: its "waiting"
    event falls among the batch's own, in moveToFinished's order."""
    await completed_before(backend, keys, "o1", "o2", "o3")
    for parent, child in (("p1", "o1"), ("p2", "o2")):  # released in one trim: in its order
        await add(backend, keys, parent)
        await backend._cmd("ZADD", keys["waiting-children"], NOW - 2000, parent)
        await backend._cmd("SADD", keys.job(parent) + ":dependencies", keys.job(child))
        await backend._cmd("HSET", keys.job(child), "parentKey", keys.job(parent))
    await running(backend, keys, "a", "b", "c")
    return ["a", "b", "c"]


async def twice(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    """One job's completion twice in a batch (and one already retried):
    the second finds its lock gone, as a second moveToFinished does."""
    await running(backend, keys, "a", "b")
    await backend._cmd("HSET", keys.job("b"), "atm", 2, "ats", 3)
    await backend._cmd("SADD", keys["stalled"], "a")
    return ["a", "a", "b", "b"]


async def many(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    """More jobs than one Lua unpack takes at once, the first one waiting
    behind the drained check."""
    ids = [f"j{n}" for n in range(1500)]
    commands: list[list[Any]] = []
    for job_id in ids:
        commands += [
            ["HSET", keys.job(job_id), "name", "task", "data", "{}", "opts", "{}"],
            ["HSET", keys.job(job_id), "timestamp", NOW - 10, "processedOn", NOW - 5, "ats", 1],
            ["LPUSH", keys["active"], job_id],
            ["SET", keys.job(job_id) + ":lock", TOKEN, "PX", 30_000],
            ["SADD", keys["stalled"], job_id],
        ]
    await backend.run(commands)
    return ids


async def refused(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    await running(backend, keys, "ok", "other", "gone", "idle", "parent", "fails")
    await backend._cmd("SET", keys.job("other") + ":lock", "another token")
    await backend._cmd("DEL", keys.job("gone") + ":lock")
    await backend._cmd("LREM", keys["active"], 0, "idle")  # locked but not active
    await backend._cmd("SADD", keys.job("parent") + ":dependencies", "bull:x:child")
    await backend._cmd("ZADD", keys.job("fails") + ":unsuccessful", 1, "bull:x:child")
    await add(backend, keys, "unclaimed")  # a hash without attempts counted, never locked
    await add(backend, keys, "bare")  # ... locked with the token all the same
    await backend._cmd("SET", keys.job("bare") + ":lock", TOKEN)
    await backend._cmd("LPUSH", keys["active"], "bare")
    return ["ok", "other", "gone", "idle", "parent", "fails", "missing", "unclaimed", "bare"]


async def linked(backend: BullMQBackend, keys: QueueKeys) -> list[str]:
    """A flow's child and a deduplicated job: FINISH leaves them to BullMQ."""
    parent = QueueKeys(keys.prefix, keys.queue + "-parents")
    await add(backend, parent, "p")
    await backend._cmd("ZADD", parent["waiting-children"], NOW - 2000, "p")
    await backend._cmd("SADD", parent.job("p") + ":dependencies", keys.job("child"))
    await running(backend, keys, "plain")
    await running(backend, keys, "child", parentKey=parent.job("p"))
    await running(backend, keys, "dedup", deid="d1")
    await backend._cmd("SET", keys.base + "de:d1", "dedup")
    return ["plain", "child", "dedup"]


async def by_move_to_finished(
    backend: BullMQBackend,
    keys: QueueKeys,
    ids: list[str],
    keep: int | None,
    updates: dict[str, str] = UPDATES,
) -> list[Any]:
    calls = [
        backend.finished(keys, i, TOKEN, "completed", f'"{i}"', keep, NOW, dict(updates))
        for i in ids
    ]
    return list(await backend.run(calls))


async def by_finish(
    backend: BullMQBackend,
    keys: QueueKeys,
    ids: list[str],
    keep: int | None,
    fields: dict[str, str] = UPDATES,
) -> list[Any]:
    updates = [x for kv in fields.items() for x in kv]
    args = [x for i in ids for x in (i, TOKEN, NOW, f'"{i}"', len(updates), *updates)]
    call = backend.call(
        "finish",
        keys.many("active stalled events meta completed wait prioritized"),
        [keys.base, -1 if keep is None else keep, *args],
    )
    (answers,) = await backend.run([call])
    answers = list(answers)
    for n, job_id in enumerate(ids):
        if answers[n] == LINKED:  # as the backend does: BullMQ's own script
            (answers[n],) = await by_move_to_finished(backend, keys, [job_id], keep, fields)
    return answers


# Fields set with a completion other than the worker's own two (progress, history).
ONE_FIELD = {"progress": "100"}
THREE_FIELDS = {**UPDATES, "stage": "done"}


@pytest.mark.parametrize(
    ("setup", "keep", "updates"),
    [
        (three, None, UPDATES),
        (three, 0, UPDATES),
        (draining, None, UPDATES),
        (trimmed, 2, UPDATES),
        (trimmed, 1000, UPDATES),
        (trimmed_child, 1, UPDATES),
        (trimmed_child_here, 1, UPDATES),
        (trimmed_child_here, 2, UPDATES),
        (twice, None, UPDATES),
        (twice, 0, UPDATES),
        (twice, 1, UPDATES),
        (many, None, UPDATES),
        (many, 5, UPDATES),
        (refused, None, UPDATES),
        (linked, None, UPDATES),
        (linked, 0, UPDATES),
        (three, None, ONE_FIELD),
        (trimmed, 2, THREE_FIELDS),
        (twice, 0, THREE_FIELDS),
    ],
)
async def test_one_finish_call_does_what_move_to_finished_does_per_job(
    bullmq_urls: Callable[[], str], setup: Setup, keep: int | None, updates: dict[str, str]
) -> None:
    backend = BullMQBackend(bullmq_urls())
    await backend.open()
    try:
        # One prefix per side: keys of a parent's queue are compared too.
        prefix = backend.config.prefix
        bull, ours = QueueKeys(prefix, "bull"), QueueKeys(prefix, "ours")
        ids = await setup(backend, bull)
        await setup(backend, ours)
        expected = await by_move_to_finished(backend, bull, ids, keep, updates)
        got = await by_finish(backend, ours, ids, keep, updates)
        assert got == expected
        for side in ("", "-parents"):
            mine = await snapshot(backend, QueueKeys(prefix, "ours" + side))
            theirs = await snapshot(backend, QueueKeys(prefix, "bull" + side))
            # A parent's key names its queue: compare it by the other side's name.
            assert json.dumps(mine).replace(":ours", ":bull") == json.dumps(theirs)
    finally:
        await backend.close()


async def test_a_flow_childs_completion_goes_through_bullmqs_own_script(
    bullmq_urls: Callable[[], str],
) -> None:
    """Through the backend: a batch with a plain job and a flow's child (as
    Node's FlowProducer links it) takes both, the child's by moveToFinished
    after FINISH left it, and the parent waiting for it moves to wait."""
    import time

    from conveyor import Conveyor
    from conveyor.backends.base import Outcome, OutcomeKind, Retention

    app = Conveyor(bullmq_urls())
    await app.open()
    backend = app.backend
    assert isinstance(backend, BullMQBackend)
    app.declare("n")
    plain, child = await app.enqueue_many([("n", {"i": 1}), ("n", {"i": 2})])
    keys = backend.keys("default")
    parent = QueueKeys(keys.prefix, "parents")
    await add(backend, parent, "p")
    await backend._cmd("ZADD", parent["waiting-children"], NOW, "p")
    await backend._cmd("SADD", parent.job("p") + ":dependencies", keys.job(child.id))
    await backend._cmd("HSET", keys.job(child.id), "parentKey", parent.job("p"))
    claimed = await backend.claim(["default"], 2, 30.0)
    assert {job.id for job in claimed} == {plain.id, child.id}
    outcomes = [
        Outcome(job.id, job.token or "", OutcomeKind.COMPLETED, time.time(), result="7")
        for job in claimed
    ]
    assert await backend.finish(outcomes, Retention()) == [True, True]
    for job_id in (plain.id, child.id):
        done = await app.get_job(job_id)
        assert done is not None and done.state.value == "completed" and done.result == 7
    assert await backend._cmd("LRANGE", parent["wait"], 0, -1) == ["p"]
    assert await backend._cmd("HGETALL", parent.job("p") + ":processed") == [
        keys.job(child.id),
        "7",
    ]
    await app.close()


async def test_a_big_batch_leaves_the_events_stream_near_its_limit(
    bullmq_urls: Callable[[], str],
) -> None:
    """moveToFinished trims the events stream before each job's event; one
    FINISH call for many jobs must not leave it a batch longer than that."""
    backend = BullMQBackend(bullmq_urls())
    await backend.open()
    try:
        lengths = []
        for name in ("bull", "ours"):
            keys = QueueKeys(backend.config.prefix, name)
            await backend._cmd("HSET", keys["meta"], "opts.maxLenEvents", 10)
            for n in range(300):
                await backend._cmd("XADD", keys["events"], "*", "event", "old", "n", n)
            ids = [f"j{n}" for n in range(500)]
            await running(backend, keys, *ids)
            if name == "bull":
                await by_move_to_finished(backend, keys, ids, None)
            else:
                await by_finish(backend, keys, ids, None)
            lengths.append(await backend._cmd("XLEN", keys["events"]))
        bull, ours = lengths
        assert ours <= bull + 100, lengths  # "~": Redis trims whole nodes of 100
    finally:
        await backend.close()
