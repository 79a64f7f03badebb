"""The bullmq:// backend's own checks: its URL, the pinned scripts, and the
queue's meta.version on open (the rest is the conformance suite's and
tests/interop's)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from test_sqlite_backend import new_job

from conveyor import Conveyor
from conveyor.backends.base import Heartbeat, LeaseStatus, Outcome, OutcomeKind, Retention
from conveyor.backends.bullmq import BullMQBackend
from conveyor.backends.bullmq.url import parse_url
from conveyor.job import AttemptOutcome, BackendUnavailableError, InvalidOptionError, JobState


class RoundTrips:
    """Counts the pipelines a backend sends to Redis (its `_pipe` calls)."""

    def __init__(self, backend: BullMQBackend) -> None:
        self.count = 0
        send = backend._pipe

        async def counted(commands: Sequence[Sequence[Any]]) -> list[Any]:
            self.count += 1
            return await send(commands)

        backend._pipe = counted  # type: ignore[method-assign]


def test_the_url_names_the_server_the_default_queue_and_the_prefix() -> None:
    config = parse_url("bullmq://:secret@redis.local:6380/2?queue=emails&prefix=shop")
    assert config.redis_url == "redis://:secret@redis.local:6380/2"
    assert (config.queue, config.prefix) == ("emails", "shop")
    assert config.bull_queue("default") == "emails"
    assert config.bull_queue("reports") == "reports"
    defaults = parse_url("bullmq://localhost")
    assert (defaults.queue, defaults.prefix) == ("default", "bull")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bullmq://localhost/0?queu=emails", "unknown option"),
        ("bullmq://localhost/0?queue=a:b", "bad BullMQ queue"),
        ("bullmq://localhost/0?prefix=", "bad BullMQ prefix"),
        ("redis://localhost/0", "not a BullMQ URL"),
    ],
)
def test_a_bad_url_is_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        parse_url(url)


def test_the_installed_scripts_are_the_pinned_pair() -> None:
    from conveyor.backends.bullmq.scripts import NAMES, load_scripts

    scripts = load_scripts()
    assert set(scripts) == set(NAMES)
    assert scripts["moveToActive"].keys == 11


def test_the_scripts_are_read_without_importing_the_python_port() -> None:
    """The port's package pulls in redis-py and more (a tenth of a second at
    every worker start); only its script files are wanted."""
    import subprocess
    import sys

    probe = (
        "import sys; from conveyor.backends.bullmq.scripts import load_scripts; "
        "load_scripts(); print(sorted(m for m in ('bullmq', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.bullmq
async def test_open_checks_and_stamps_the_queues_meta_version(
    bullmq_urls: Callable[[], str],
) -> None:
    url = bullmq_urls()
    app = Conveyor(url)
    await app.open()
    meta = f"{parse_url(url).prefix}:default:meta"
    backend = app.backend
    assert await backend._cmd("HGET", meta, "version") == "bullmq:6.4.0"  # type: ignore[attr-defined]
    # Node BullMQ of the same major stamps its own version: served.
    await backend._cmd("HSET", meta, "version", "bullmq:6.7.0")  # type: ignore[attr-defined]
    await app.close()
    again = Conveyor(url)
    await again.open()
    await again.close()
    # Another major's layout is refused, naming what made the queue.
    await backend._cmd("HSET", meta, "version", "bullmq:5.58.0")  # type: ignore[attr-defined]
    other = Conveyor(url)
    with pytest.raises(BackendUnavailableError, match=r"bullmq:5\.58\.0.*6\.x"):
        await other.open()
    await backend.close()


@pytest.mark.bullmq
async def test_a_job_a_claim_fails_as_stalled_is_reported_failed_once(
    bullmq_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BullMQ's stalled check puts a job stalled too often back in the wait
    list marked for failure ("defa"), and the next claim fails it. When a
    worker's claim takes it between the check and the recovery's own failing
    of it (seen in CI), the recovery must not report it as queued again while
    the claim is still failing it, and the failure must be reported once."""
    import asyncio

    from conveyor.backends.bullmq.consume import BullConsumer

    url = bullmq_urls()
    app = Conveyor(url)

    @app.job("work")
    async def work(payload: object) -> None:
        return None

    await app.open()
    backend = app.backend
    try:
        job = await app.enqueue("work", {})
        await backend.claim(["default"], 1, 0.05)  # a worker that dies at once
        await asyncio.sleep(0.2)
        real_after_stall = BullConsumer._after_stall
        real_fail_deferred = BullConsumer._fail_deferred
        claimed: list[object] = []
        let_fail = asyncio.Event()

        async def slow_fail_deferred(self: BullConsumer, *args: object) -> None:
            await let_fail.wait()  # the claimer is slow to fail it
            await real_fail_deferred(self, *args)  # type: ignore[arg-type]

        async def racing_claim(self: BullConsumer, *args: object) -> bool:
            # Another worker of this process claims at that moment.
            claimed.append(asyncio.ensure_future(self.claim(["default"], 1, 30.0)))
            await asyncio.sleep(0.2)
            return await real_after_stall(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(BullConsumer, "_fail_deferred", slow_fail_deferred)
        monkeypatch.setattr(BullConsumer, "_after_stall", racing_claim)
        first = await backend.recover_expired(None, 0)
        assert [(j.id, j.state) for j in first if j.state is not JobState.FAILED] == []
        let_fail.set()
        assert await claimed[0] == []  # type: ignore[misc]
        monkeypatch.setattr(BullConsumer, "_after_stall", real_after_stall)
        later = await backend.recover_expired(None, 0)
        reported = [j for j in first + later if j.id == job.id]
        assert [j.state for j in reported] == [JobState.FAILED]
    finally:
        await app.close()


@pytest.mark.bullmq
async def test_waiting_leaves_a_later_markers_wake_up_for_other_workers(
    bullmq_urls: Callable[[], str],
) -> None:
    """A delayed job's marker says when it is due; an idle conveyor worker
    whose wait ends before then must leave the marker, or an idle Node worker
    (blocked on the same marker set) is not woken when the job is due and
    sleeps its whole drain delay."""
    import time

    url = bullmq_urls()
    app = Conveyor(url)
    app.declare("later")
    await app.open()
    backend = app.backend
    try:
        await app.enqueue("later", {}, delay=30)
        marker = f"{parse_url(url).prefix}:default:marker"
        before = await backend._cmd("ZRANGE", marker, 0, -1, "WITHSCORES")  # type: ignore[attr-defined]
        assert before, "the delayed add left a marker"
        started = time.monotonic()
        await backend.wait_for_work(["default"], 0.2)
        assert time.monotonic() - started < 5
        after = await backend._cmd("ZRANGE", marker, 0, -1, "WITHSCORES")  # type: ignore[attr-defined]
        assert after == before
    finally:
        await app.close()


async def test_outcomes_and_the_next_claim_take_one_round_trip_each(
    bullmq_urls: Callable[[], str],
) -> None:
    """A worker's loop ends a batch of jobs and claims the next ones: the
    outcomes and the claim (by name: the script brings the names' jobs
    forward and takes them in one call) are one round trip."""
    app = Conveyor(bullmq_urls())
    await app.open()
    backend = app.backend
    assert isinstance(backend, BullMQBackend)
    app.declare("n")
    await app.enqueue_many([("n", {"i": i}) for i in range(20)])
    first = await backend.claim(["default"], 10, 30.0, names=["n"])
    assert [job.payload for job in first] == [{"i": i} for i in range(10)]
    outcomes = [
        Outcome(job.id, job.token or "", OutcomeKind.COMPLETED, time.time(), result="null")
        for job in first
    ]
    trips = RoundTrips(backend)
    accepted, second = await backend.finish_and_claim(
        outcomes, Retention(), ["default"], 10, 30.0, names=["n"]
    )
    assert trips.count == 1
    assert accepted == [True] * 10
    assert [job.payload for job in second] == [{"i": i} for i in range(10, 20)]
    trips.count = 0
    assert (
        await backend.finish(
            [
                Outcome(job.id, job.token or "", OutcomeKind.COMPLETED, time.time(), result="1")
                for job in second
            ],
            Retention(),
        )
        == [True] * 10
    )
    assert trips.count == 1
    # The history each outcome wrote is built from what its claim read.
    done = await app.get_job(first[0].id)
    assert done is not None and done.state is JobState.COMPLETED
    assert [(a["attempt"], a["outcome"]) for a in done.history] == [
        (1, AttemptOutcome.COMPLETED.value)
    ]
    await app.close()


@pytest.mark.bullmq
async def test_a_claim_by_name_passes_over_other_names_in_order(
    bullmq_urls: Callable[[], str],
) -> None:
    """Jobs of names this worker does not serve stay where they were, and
    the served ones come in enqueue order, however deep they sit."""
    app = Conveyor(bullmq_urls())
    await app.open()
    backend = app.backend
    app.declare("n")
    app.declare("other")
    names = ["other"] * 5 + ["n", "other", "n", "n"]
    await app.enqueue_many([(name, {"i": i}) for i, name in enumerate(names)])
    mine = await backend.claim(["default"], 2, 30.0, names=["n"])
    assert [job.payload for job in mine] == [{"i": 5}, {"i": 7}]
    rest = await backend.claim(["default"], 10, 30.0, names=["n"])
    assert [job.payload for job in rest] == [{"i": 8}]
    others = await backend.claim(["default"], 10, 30.0, names=["other"])
    assert [job.payload for job in others] == [{"i": i} for i in (0, 1, 2, 3, 4, 6)]
    assert {job.attempts for job in others} == {1}
    await app.close()


@pytest.mark.bullmq
async def test_heartbeats_renew_every_lease_in_one_round_trip(
    bullmq_urls: Callable[[], str],
) -> None:
    """A worker beats for every job it holds, every second: one round trip
    for all; a job finished meanwhile is told lost without reading it back."""
    app = Conveyor(bullmq_urls())
    await app.open()
    backend = app.backend
    assert isinstance(backend, BullMQBackend)
    app.declare("n")
    await app.enqueue_many([("n", {"i": i}) for i in range(10)])
    jobs = await backend.claim(["default"], 10, 30.0, names=["n"])
    beats = [Heartbeat(job.id, job.token or "") for job in jobs]
    trips = RoundTrips(backend)
    assert await backend.heartbeat(beats, 30.0) == [LeaseStatus.HELD] * 10
    assert trips.count == 1
    await backend.finish(
        [
            Outcome(job.id, job.token or "", OutcomeKind.COMPLETED, time.time(), result="1")
            for job in jobs[:5]
        ],
        Retention(),
    )
    trips.count = 0
    statuses = await backend.heartbeat(beats, 30.0)
    assert statuses == [LeaseStatus.LOST] * 5 + [LeaseStatus.HELD] * 5
    assert trips.count == 3  # the known queues, their locks of the finished five, the renewals
    # Through another backend object (nothing claimed there): found by its lock.
    other = Conveyor(app.backend.url)  # type: ignore[attr-defined]
    await other.open()
    assert await other.backend.heartbeat(beats[5:], 30.0) == [LeaseStatus.HELD] * 5
    stale = [Heartbeat(job.id, "not-the-token") for job in jobs[5:]]
    assert await other.backend.heartbeat(stale, 30.0) == [LeaseStatus.LOST] * 5
    await other.close()
    await app.close()


@pytest.mark.bullmq
async def test_an_enqueue_is_one_round_trip_and_reads_back_only_duplicates(
    bullmq_urls: Callable[[], str],
) -> None:
    """The job an add stores is the one conveyor sent: the enqueue answers it
    without reading it back (a read's getState walks the wait list in Lua,
    so every enqueue got slower as the queue grew). A duplicate key answers
    the job already stored."""
    app = Conveyor(bullmq_urls())
    app.declare("n")
    await app.open()
    backend = app.backend
    assert isinstance(backend, BullMQBackend)
    await app.enqueue("n", {"i": -1})  # the queue's registry, noted once
    trips = RoundTrips(backend)
    plain = await app.enqueue("n", {"i": 0})
    later = await app.enqueue("n", {"i": 1}, delay=60, priority=0, key="k1")
    urgent = await app.enqueue("n", {"i": 2}, priority=3, retries=5, timeout=9)
    elsewhere = await app.enqueue("n", {"i": 3}, queue="q2", key="k1", delay=0.0015)
    assert trips.count == 5  # the last: its queue noted in the registry first
    assert elsewhere.id == "q2:k1" and not elsewhere.duplicate
    for made in (plain, later, urgent, elsewhere):
        stored = await app.get_job(made.id)
        assert stored is not None
        assert replace(made, duplicate=False) == replace(stored, duplicate=False)
    trips.count = 0
    again = await app.enqueue("n", {"i": 99}, key="k1")
    assert again.duplicate and again.payload == {"i": 1} and again.id == later.id
    await app.close()


@pytest.mark.bullmq
async def test_a_delayed_job_is_due_within_a_millisecond_of_its_run_at(
    bullmq_urls: Callable[[], str],
) -> None:
    """BullMQ keeps whole milliseconds: creation time and delay. Rounding each
    up on its own put the due time up to 2 ms after the run_at asked for (a
    conformance test saw 1.003 ms); the delay is the difference of the two
    rounded instants, so the due time is run_at rounded up."""
    app = Conveyor(bullmq_urls())
    await app.open()
    backend = app.backend
    try:
        base = float(int(time.time()) + 60)  # a whole second, a minute ahead
        created, run_at = base + 0.0001, base + 0.0002001
        [made] = await backend.enqueue([new_job(created_at=created, run_at=run_at)])
        stored = await app.get_job(made.id)
        assert stored is not None and made.run_at is not None and stored.run_at is not None
        for job in (made, stored):
            assert 0 <= job.run_at.timestamp() - run_at < 0.001
    finally:
        await app.close()


def test_an_attempts_history_is_what_json_would_write() -> None:
    import json

    from conveyor.backends.bullmq.calls import history_with
    from conveyor.backends.records import stored_entry
    from conveyor.job import HISTORY_LIMIT

    first = history_with(("1", "1700000000123", None), AttemptOutcome.COMPLETED, 1700000001.5, None)
    assert first == json.dumps(
        [stored_entry(1, 1700000000.123, 1700000001.5, AttemptOutcome.COMPLETED, None)]
    )
    assert history_with(("1", "", "[]"), AttemptOutcome.FAILED, 2.0, 'a "quoted" é') == json.dumps(
        [stored_entry(1, None, 2.0, AttemptOutcome.FAILED, 'a "quoted" é')]
    )
    full = json.dumps(
        [stored_entry(n, 1.0, 2.0, AttemptOutcome.FAILED, "x") for n in range(1, HISTORY_LIMIT + 1)]
    )
    after = json.loads(
        history_with((str(HISTORY_LIMIT + 1), "3000", full), AttemptOutcome.COMPLETED, 4.0, None)
    )
    assert len(after) == HISTORY_LIMIT and after[0]["attempt"] == 2
    assert after[-1] == stored_entry(HISTORY_LIMIT + 1, 3.0, 4.0, AttemptOutcome.COMPLETED, None)


@pytest.mark.bullmq
async def test_one_bullmq_id_in_two_queues_is_two_jobs(bullmq_urls: Callable[[], str]) -> None:
    """BullMQ's ids are unique per queue only (Node's numbered ids repeat in
    every queue): a worker serving two queues must keep their jobs apart,
    each outcome landing on its own job, not on its namesake's."""
    backend = BullMQBackend(bullmq_urls())
    await backend.open()
    try:
        for one_claim in (True, False):  # one token for both, or one each
            await backend.enqueue([new_job("qa", key="same"), new_job("qb", key="same")])
            if one_claim:
                claimed = await backend.claim(["qa", "qb"], 2, 30.0)
            else:
                claimed = [*await backend.claim(["qa"], 1, 30.0)]
                claimed += await backend.claim(["qb"], 1, 30.0)
            a, b = sorted(claimed, key=lambda job: job.queue)
            assert (a.queue, b.queue) == ("qa", "qb") and a.id != b.id
            assert a.key == b.key == "same"
            beats = await backend.heartbeat(
                [Heartbeat(a.id, a.token or ""), Heartbeat(b.id, b.token or "")], 30.0
            )
            assert beats == [LeaseStatus.HELD, LeaseStatus.HELD]
            done = Outcome(a.id, a.token or "", OutcomeKind.COMPLETED, time.time(), result='"qa"')
            assert await backend.finish([done], Retention()) == [True]
            stored_a, stored_b = await backend.get(a.id), await backend.get(b.id)
            assert stored_a is not None and stored_a.queue == "qa"
            assert stored_a.state is JobState.COMPLETED and stored_a.result == "qa"
            assert stored_b is not None and stored_b.queue == "qb"
            assert stored_b.state is JobState.RUNNING and stored_b.result is None
            late = Outcome(b.id, b.token or "", OutcomeKind.COMPLETED, time.time(), result='"qb"')
            assert await backend.finish([late], Retention()) == [True]
            stored_b = await backend.get(b.id)
            assert stored_b is not None and stored_b.result == "qb"
            assert await backend.purge([JobState.COMPLETED], None, None) == 2
    finally:
        await backend.close()


@pytest.mark.bullmq
async def test_a_worker_on_two_queues_runs_namesakes_once_each(
    bullmq_urls: Callable[[], str],
) -> None:
    app = Conveyor(bullmq_urls())
    ran: list[tuple[str, int]] = []

    @app.job("a", queue="qa")
    async def a(payload: int) -> int:
        ran.append(("qa", payload))
        return payload

    @app.job("b", queue="qb")
    async def b(payload: int) -> int:
        ran.append(("qb", payload))
        return -payload

    async with app:
        jobs = [await a.enqueue(i, key=f"k{i}") for i in range(20)]
        jobs += [await b.enqueue(i, key=f"k{i}") for i in range(20)]
        assert len({job.id for job in jobs}) == 40
        async with app.worker(queues=["qa", "qb"], concurrency=10):
            for job in jobs:
                await app.wait(job.id, timeout=30)
        done = [await app.get_job(job.id) for job in jobs]
        assert [d.result if d else None for d in done] == [*range(20), *(-i for i in range(20))]
    assert sorted(ran) == sorted([("qa", i) for i in range(20)] + [("qb", i) for i in range(20)])


@pytest.mark.bullmq
async def test_a_jobs_own_remove_on_complete_and_on_fail_are_honoured(
    bullmq_urls: Callable[[], str],
) -> None:
    """A Node producer's `removeOnComplete` / `removeOnFail` (true, a count,
    or {count, age}) win over the worker's retention, as BullMQ's worker
    lets them; jobs without one keep the worker's retention."""
    backend = BullMQBackend(bullmq_urls())
    await backend.open()
    try:
        own = {
            "gone": {"removeOnComplete": True},
            "keep-all": {"removeOnComplete": False},
            "fail-gone": {"removeOnFail": True},
            "fail-early": {},
            "fail-one": {"removeOnFail": 1},  # trims fail-early
            "fail-late": {},
            "plain": {},
        }
        jobs = await backend.enqueue([new_job(key=key) for key in own])
        keys = backend.keys("default")
        for key, extra in own.items():
            opts = json.loads(await backend._cmd("HGET", keys.job(key), "opts"))
            await backend._cmd("HSET", keys.job(key), "opts", json.dumps({**opts, **extra}))
        claimed = {job.id: job for job in await backend.claim(["default"], 10, 30.0)}
        assert set(claimed) == {job.id for job in jobs}

        def outcome(key: str) -> Outcome:
            job = claimed[key]
            if key.startswith("fail"):
                return Outcome(job.id, job.token or "", OutcomeKind.FAILED, time.time(), error="x")
            return Outcome(job.id, job.token or "", OutcomeKind.COMPLETED, time.time(), result="1")

        retention = Retention(keep_completed=0, keep_failed=None)  # the worker's: keep none
        assert await backend.finish([outcome(key) for key in own], retention) == [True] * 7
        left = {key: await backend.get(key) for key in own}
        assert left["gone"] is None  # its own: remove
        assert left["keep-all"] is not None and left["keep-all"].state is JobState.COMPLETED
        assert left["plain"] is None  # the worker's retention: keep none
        assert left["fail-gone"] is None and left["fail-early"] is None
        assert [left[k] is not None for k in ("fail-one", "fail-late")] == [True, True]
        assert await backend._cmd("ZCARD", keys["failed"]) == 2
    finally:
        await backend.close()
