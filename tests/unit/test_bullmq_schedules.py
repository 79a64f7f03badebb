"""Recurring schedules on bullmq:// (conveyor/backends/bullmq/schedules.py):
stored as BullMQ job schedulers, and a tick's compare-and-set and its jobs
in one atomic step (Node's side is tests/interop/test_bullmq_schedulers.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends.bullmq.url import parse_url

pytestmark = pytest.mark.bullmq

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC).timestamp()


class Dropped(ConnectionError):
    """The connection went away after the tick's compare-and-set was sent."""


async def test_a_tick_is_never_advanced_without_its_job(
    bullmq_urls: Callable[[], str],
) -> None:
    """The old bullmq:// tick moved next_run in one script and added the job
    in a second call: a connection lost in between advanced the schedule and
    dropped the tick. Here every later call fails, as after such a loss."""
    app = Conveyor(bullmq_urls())

    @app.job("j")
    async def j(payload: Any) -> None: ...

    await app.recurring("s", "j", {"n": 1}, every=60)
    backend: Any = app.backend
    rec = await backend.schedule_get("s")
    rec.next_run = T0
    await backend.schedule_put(rec)

    async def dropped(*args: Any, **kwargs: Any) -> Any:
        raise Dropped("connection lost")

    # Whatever the tick sends after its compare-and-set: the old one's
    # enqueue, the new one's reading back of the jobs it added.
    backend.enqueue, backend.read_jobs = dropped, dropped
    with pytest.raises(Dropped):
        await app.scheduler().tick(now=T0 + 1)
    del backend.enqueue, backend.read_jobs

    after = await backend.schedule_get("s")
    jobs = await app.list_jobs(name="j")
    advanced = after.next_run != T0
    assert advanced == bool(jobs), (after.next_run, jobs)
    assert [job.key for job in jobs] == [f"recurring:s:{T0:.3f}"]
    await app.close()


async def test_a_schedule_is_a_bullmq_job_scheduler(bullmq_urls: Callable[[], str]) -> None:
    url = bullmq_urls()
    app = Conveyor(url)

    @app.job("digest", retries=2, priority=4)
    async def digest(payload: Any) -> None: ...

    made = await app.recurring("daily", "digest", {"kind": "d"}, cron="0 9 * * *", tz="Asia/Tokyo")
    await app.recurring("often", "digest", None, every="90 seconds", queue="reports")
    backend: Any = app.backend
    prefix = parse_url(url).prefix
    assert made.next_run is not None
    score = await backend._cmd("ZSCORE", f"{prefix}:default:repeat", "daily")
    assert float(score) == made.next_run.timestamp() * 1000
    raw = await backend._cmd("HGETALL", f"{prefix}:default:repeat:daily")
    fields = dict(zip(raw[::2], raw[1::2], strict=True))
    assert (fields["name"], fields["pattern"], fields["tz"], fields["ic"]) == (
        "digest",
        "0 9 * * *",
        "Asia/Tokyo",
        "1",
    )
    assert json.loads(fields["data"]) == {"kind": "d"}
    assert json.loads(fields["opts"])["attempts"] == 3
    assert json.loads(fields["opts"])["priority"] == 4
    every = await backend._cmd("HGET", f"{prefix}:reports:repeat:often", "every")
    assert every == "90000"

    # Disabled: out of BullMQ's set (Node stops listing it), kept for conveyor.
    assert await app.disable_recurring("daily")
    assert await backend._cmd("ZSCORE", f"{prefix}:default:repeat", "daily") is None
    assert [s.name for s in await app.list_recurring()] == ["daily", "often"]
    assert await app.enable_recurring("daily")
    assert await backend._cmd("ZSCORE", f"{prefix}:default:repeat", "daily") is not None

    # Moved to another queue: gone from the first one's scheduler set.
    await app.recurring("daily", "digest", {"kind": "d"}, cron="0 9 * * *", queue="reports")
    assert await backend._cmd("ZCARD", f"{prefix}:default:repeat") == 0
    assert await backend._cmd("EXISTS", f"{prefix}:default:repeat:daily") == 0
    assert await app.delete_recurring("daily")
    assert await app.delete_recurring("often")
    assert await app.list_recurring() == []
    assert await backend._cmd("KEYS", f"{prefix}:*:repeat*") == []
    await app.close()


async def test_schedules_kept_in_conveyors_own_keys_become_job_schedulers_on_open(
    bullmq_urls: Callable[[], str],
) -> None:
    """An earlier bullmq:// backend kept schedules as the redis:// one does."""
    from conveyor.backends.redis.stores import RedisStores

    url = bullmq_urls()
    app = Conveyor(url)
    app.declare("j")
    made = await app.recurring("old", "j", {"n": 2}, every=30)
    backend: Any = app.backend
    rec = await backend.schedule_get("old")
    await backend.schedule_delete("old")
    await RedisStores.schedule_put(backend, rec)  # where the earlier one put it
    await app.close()

    again = Conveyor(url)
    again.declare("j")
    await again.open()
    assert await again.list_recurring() == [made]
    store: Any = again.backend
    assert await RedisStores.schedule_list(store) == []
    prefix = parse_url(url).prefix
    assert await store._cmd("ZSCORE", f"{prefix}:default:repeat", "old") is not None
    await again.close()
