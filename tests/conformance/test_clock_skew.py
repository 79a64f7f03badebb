"""Clocks (issue 7, point 7): one clock per backend, whatever the workers' say.

A backend decides leases, due times and expiries by a clock of its own (the
server's on Redis, the host's on SQLite and memory), so a worker, a scheduler
or a facade whose clock is wrong by several seconds changes none of them.

A skewed worker runs in a thread of its own with its own event loop, and sees
`time.time()` shifted in the worker module only, as a worker on a host whose
clock is off would; the other worker, in the test's loop, sees the true time.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
from typing import Any

import pytest

import conveyor.scheduler as scheduler_module
import conveyor.worker as worker_module
from conveyor import Conveyor, JobContext, JobState
from conveyor.backends.base import Outcome, OutcomeKind, Retention

from .conftest import MakeApp, needs
from .helpers import WAIT

pytestmark = needs("lookup")

Q = ["default"]
KEEP_ALL = Retention(keep_completed=None, keep_failed=None)

# The skew of the current thread's clock, where a test set one.
_SKEW = threading.local()


class _SkewedTime:
    """Stands in for the `time` module of one conveyor module: `time()` is
    off by the current thread's skew (none unless the thread set one)."""

    def __init__(self, real: types.ModuleType, skew: float | None = None) -> None:
        self._real = real
        self._skew = skew  # None: the thread's

    def time(self) -> float:
        skew = self._skew if self._skew is not None else getattr(_SKEW, "by", 0.0)
        now: float = self._real.time()
        return now + skew

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


LEASE = 1.5
JOB_SECONDS = 3.0  # two leases: a job lives only by its heartbeats
JOBS = 6
SETTINGS: dict[str, Any] = {
    "concurrency": 3,  # each worker takes half of the jobs
    "lease": LEASE,
    "heartbeat_interval": 0.25,
    "recover_interval": 0.1,
    "poll_interval": 0.05,
    "shutdown_timeout": 5.0,
    "max_stalled": 5,  # a stolen job runs again rather than failing
    "scheduler": False,
}


def _worker_modules() -> list[types.ModuleType]:
    modules = [m for n, m in sys.modules.items() if n.startswith("conveyor.worker")]
    assert worker_module in modules and len(modules) > 1, "the worker's modules moved?"
    return modules


@pytest.mark.parametrize("skew", [10.0, -10.0], ids=["ahead", "behind"])
@needs("concurrent_claims")
async def test_a_worker_with_a_skewed_clock_steals_no_live_job(
    make_app: MakeApp,
    backend_name: str,
    backend_url: str,
    monkeypatch: pytest.MonkeyPatch,
    skew: float,
) -> None:
    """Two workers share a backend, one with its clock 10 s off. Jobs run for
    two leases, kept alive by heartbeats: every job runs once, on its first
    attempt, with no stall, and both workers run some."""
    app = await make_app()
    starts: dict[str, list[int]] = {}  # job id -> attempts started
    ran_by: set[str] = set()

    def register(conveyor: Conveyor) -> None:
        @conveyor.job("slow", retries=3, timeout=None)
        async def slow(payload: int, ctx: JobContext) -> int:
            starts.setdefault(ctx.job_id, []).append(ctx.attempt)
            ran_by.add("skewed" if getattr(_SKEW, "by", 0.0) else "true")
            await asyncio.sleep(JOB_SECONDS)
            return payload

    register(app)
    jobs = await app.enqueue_many([("slow", i) for i in range(JOBS)])
    # Every module of the worker that reads the wall clock: a worker on a
    # host whose clock is off sees it off everywhere.
    for module in _worker_modules():
        if isinstance(getattr(module, "time", None), types.ModuleType):
            monkeypatch.setattr(module, "time", _SkewedTime(time))

    stop = threading.Event()
    errors: list[BaseException] = []

    async def skewed_worker() -> None:
        # memory:// lives in one process: the two workers share its store.
        shared = app.backend if backend_name == "memory" else None
        other = Conveyor(backend_url, backend=shared)
        register(other)
        try:
            async with other.worker(**SETTINGS):
                await asyncio.to_thread(stop.wait, 4 * WAIT)
        finally:
            await other.close()

    def run_skewed() -> None:
        _SKEW.by = skew
        try:
            asyncio.run(skewed_worker())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run_skewed, name="skewed-worker")
    async with app.worker(**SETTINGS):
        thread.start()
        try:
            finished = [await app.wait(job.id, timeout=2 * WAIT) for job in jobs]
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 2 * WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert starts == {job.id: [1] for job in jobs}, "a job ran more than once"
    for job in finished:
        assert job.state is JobState.COMPLETED, job.error
        assert (job.attempts, job.stalls) == (1, 0)
    assert ran_by == {"skewed", "true"}


async def test_a_retry_counts_its_delay_from_the_backends_clock(app: Conveyor) -> None:
    """A worker reports a retry's delay, not a time on its own clock: the
    backend adds it to its own now, so a worker whose clock is far ahead does
    not put the retry off (nor one behind bring it forward)."""

    @app.job("work")
    async def work(payload: Any) -> None: ...

    job = await app.enqueue("work", {})
    (claimed,) = await app.backend.claim(Q, 1, 30.0)
    assert claimed.token is not None
    worker_clock = time.time() + 1000.0
    retry = Outcome(
        job.id, claimed.token, OutcomeKind.SCHEDULED, worker_clock, error="boom", retry_in=30.0
    )
    before = await app.backend.clock()
    assert await app.backend.finish([retry], KEEP_ALL) == [True]
    after = await app.backend.clock()
    stored = await app.get_job(job.id)
    assert stored is not None
    assert stored.state is JobState.SCHEDULED
    assert before + 30.0 <= stored.run_at.timestamp() <= after + 30.0 + 0.001
    assert await app.backend.claim(Q, 1, 30.0) == []  # not due yet


async def test_a_due_retry_is_queued_at_once(app: Conveyor) -> None:
    @app.job("work")
    async def work(payload: Any) -> None: ...

    job = await app.enqueue("work", {})
    (claimed,) = await app.backend.claim(Q, 1, 30.0)
    assert claimed.token is not None
    retry = Outcome(job.id, claimed.token, OutcomeKind.SCHEDULED, 0.0, error="boom", retry_in=0)
    assert await app.backend.finish([retry], KEEP_ALL) == [True]
    assert (await app.get_job(job.id)).state is JobState.QUEUED
    (again,) = await app.backend.claim(Q, 1, 30.0)
    assert again.id == job.id


async def test_the_backends_clock_is_the_time(app: Conveyor) -> None:
    """`clock()` is the backend's current time: the server's on a server
    (this test's server runs on this host), the host's otherwise."""
    before = time.time()
    now = await app.backend.clock()
    after = time.time()
    assert before - 0.01 <= now <= after + 0.01


async def test_a_scheduler_whose_clock_is_ahead_fires_nothing_early(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler decides which ticks are due by the backend's clock, once
    per pass: one 100 s ahead does not fire a schedule due in 60 s."""

    @app.job("tick")
    async def tick(payload: Any) -> None: ...

    schedule = await app.recurring("every-minute", "tick", {}, every=60)
    # (raising=False: a scheduler that no longer reads its own clock has no `time`.)
    monkeypatch.setattr(scheduler_module, "time", _SkewedTime(time, skew=100.0), raising=False)
    assert await app.scheduler().tick() == 0
    stored = await app.get_recurring("every-minute")
    assert stored is not None and stored.next_run == schedule.next_run
    assert await app.list_jobs() == []
