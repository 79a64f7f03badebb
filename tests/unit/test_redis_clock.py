"""Redis decides by the server's clock (issue 7, point 7).

The client's clock is made wrong by 100 s, in the backend's modules (and, for
enqueues, in the facade's): claims, heartbeats, recovery, hand-backs, worker
presence and delays called without `now` must follow the server's TIME all
the same. The server runs on this host, so its TIME is the true time.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import conveyor.app as app_module
import conveyor.backends.redis.backend as redis_backend_module
import conveyor.backends.redis.stores as redis_stores_module
from conveyor import Conveyor, JobState
from conveyor.backends.base import Heartbeat, LeaseStatus
from conveyor.backends.stores import WorkerInfo

pytestmark = pytest.mark.redis

Q = ["default"]


class _SkewedTime:
    """Stands in for a module's `time`: `time()` is off by `skew` seconds."""

    def __init__(self, skew: float) -> None:
        self._skew = skew

    def time(self) -> float:
        return time.time() + self._skew

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def skew_clock(monkeypatch: pytest.MonkeyPatch, skew: float, *modules: types.ModuleType) -> None:
    """Make `modules` see a clock `skew` seconds off, should they read one
    (raising=False: a module that no longer does has no `time` to replace)."""
    for module in modules:
        monkeypatch.setattr(module, "time", _SkewedTime(skew), raising=False)


@pytest.fixture
def server_now(redis_server_url: str | None) -> Iterator[Callable[[], float]]:
    """The Redis server's TIME."""
    import redis

    if redis_server_url is None:
        pytest.skip("no Redis server")
    client = redis.Redis.from_url(redis_server_url)

    def now() -> float:
        seconds, micros = client.time()
        return seconds + micros / 1e6

    yield now
    client.close()


@pytest.fixture
async def app(redis_urls: Callable[[], str]) -> Any:
    conveyor = Conveyor(redis_urls())

    @conveyor.job("work")
    async def work(payload: Any) -> None: ...

    await conveyor.open()
    yield conveyor
    await conveyor.close()


async def lease_until(app: Conveyor, job_id: str) -> float:
    backend: Any = app.backend
    raw = await backend._cmd("HGET", f"{backend.prefix}:job:{job_id}", "lease_until")
    return float(raw)


@pytest.mark.parametrize("skew", [100.0, -100.0], ids=["client ahead", "client behind"])
async def test_job_operations_without_now_follow_the_servers_clock(
    app: Conveyor,
    server_now: Callable[[], float],
    monkeypatch: pytest.MonkeyPatch,
    skew: float,
) -> None:
    backend = app.backend
    first = await app.enqueue("work", 1)
    second = await app.enqueue("work", 2)
    third = await app.enqueue("work", 3)
    skew_clock(monkeypatch, skew, redis_backend_module, redis_stores_module)

    before = server_now()
    (claimed,) = await backend.claim(Q, 1, 5.0)
    after = server_now()
    assert claimed.id == first.id and claimed.token is not None
    assert claimed.started_at is not None
    assert before <= claimed.started_at.timestamp() <= after
    assert before + 5.0 <= await lease_until(app, first.id) <= after + 5.0

    # Ahead, the client would see the lease expired; behind, it would
    # shorten it with a heartbeat. Neither happens.
    assert await backend.recover_expired(None, 1) == []
    before = server_now()
    assert await backend.heartbeat([Heartbeat(first.id, claimed.token)], 5.0) == [LeaseStatus.HELD]
    after = server_now()
    assert before + 5.0 <= await lease_until(app, first.id) <= after + 5.0
    assert (await app.get_job(first.id)).state is JobState.RUNNING

    # A short lease runs out by the server's clock, and only then.
    (short,) = await backend.claim(Q, 1, 0.3)
    assert short.id == second.id
    deadline = time.monotonic() + 10.0
    recovered = await backend.recover_expired(None, 1)
    while not recovered and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        recovered = await backend.recover_expired(None, 1)
    assert [job.id for job in recovered] == [second.id]
    assert server_now() - 1.0 <= recovered[0].run_at.timestamp() <= server_now()

    # A lost claim's jobs are handed back at the server's now.
    (lost,) = await backend.claim(Q, 1, 5.0, claim_id="lost-claim")
    assert lost.id == third.id
    assert await backend.unclaim("lost-claim") == 1
    handed_back = await app.get_job(third.id)
    assert handed_back.state is JobState.QUEUED
    assert server_now() - 1.0 <= handed_back.run_at.timestamp() <= server_now()

    before = server_now()
    now = await backend.clock()
    assert before <= now <= server_now()

    # Worker presence expires by the server's clock too.
    info = WorkerInfo("w1", "host", 1, ("default",), ("work",), now, now)
    await backend.worker_beat(info, 20.0)
    assert [w.id for w in await backend.workers()] == ["w1"]


@pytest.mark.parametrize("skew", [100.0, -100.0], ids=["producer ahead", "producer behind"])
async def test_a_delay_counts_from_the_servers_clock(
    app: Conveyor,
    server_now: Callable[[], float],
    monkeypatch: pytest.MonkeyPatch,
    skew: float,
) -> None:
    """A producer asks for a delay, not a time on its own clock: the job is
    due that long after the server's now, with or without a key, alone or
    in a batch. A run_at the producer gives is a time, and kept as given."""
    skew_clock(monkeypatch, skew, app_module, redis_backend_module, redis_stores_module)
    before = server_now()
    delayed = await app.enqueue("work", 1, delay=30)
    keyed = await app.enqueue("work", 2, delay=30, key="keyed")
    batch = await app.enqueue_many([("work", 3, {"delay": 30}), ("work", 4, {"key": "now"})])
    after = server_now()
    for job in (delayed, keyed, batch[0]):
        stored = await app.get_job(job.id)
        assert stored is not None
        assert stored.state is JobState.SCHEDULED
        assert before + 30.0 <= stored.run_at.timestamp() <= after + 30.0
        assert before <= stored.created_at.timestamp() <= after
        # The record enqueue returned is the one stored.
        assert (job.state, job.run_at, job.created_at) == (
            stored.state,
            stored.run_at,
            stored.created_at,
        )
    due_now = await app.get_job(batch[1].id)
    assert due_now.state is JobState.QUEUED
    assert before <= due_now.run_at.timestamp() <= after

    at = datetime.now(UTC) + timedelta(seconds=30)
    absolute = await app.enqueue("work", 5, run_at=at)
    stored = await app.get_job(absolute.id)
    assert stored.state is JobState.SCHEDULED
    assert abs(stored.run_at.timestamp() - at.timestamp()) < 0.001
