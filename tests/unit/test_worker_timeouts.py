"""The worker's job timeouts share a loop timer per slice of deadlines
(worker/timeouts.py): a job is never timed out before its timeout, at most
a slice later; a job that ended is never timed out; jobs started together
cost one timer, not one each."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import patch

from conveyor.worker.timeouts import GRAIN, Timeouts


async def test_an_item_expires_at_its_deadline_never_before() -> None:
    loop = asyncio.get_running_loop()
    expired: dict[str, float] = {}
    timeouts: Timeouts[str] = Timeouts(loop, lambda key: expired.setdefault(key, loop.time()))
    armed_at = {}
    for n, timeout in enumerate((0.05, 0.12, 0.2)):
        armed_at[str(n)] = (loop.time(), timeout)
        timeouts.arm(str(n), str(n), timeout)
        await asyncio.sleep(0.003)
    await asyncio.sleep(0.35)
    assert sorted(expired) == ["0", "1", "2"]
    for key, (at, timeout) in armed_at.items():
        late = expired[key] - (at + timeout)
        assert 0 <= late < GRAIN + 0.05, (key, late)
    assert len(timeouts) == 0


async def test_a_disarmed_item_never_expires() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    timeouts: Timeouts[str] = Timeouts(loop, expired.append)
    # Armed at one instant, so in one slice (two reads of the clock may fall
    # either side of a slice's end under load).
    now = loop.time()
    with patch.object(loop, "time", return_value=now):
        kept = timeouts.arm("kept", "kept", 0.05)
        gone = timeouts.arm("gone", "gone", 0.05)
    assert kept == gone  # the same slice
    timeouts.disarm("gone", gone)
    assert len(timeouts) == 1
    await asyncio.sleep(0.05 + GRAIN + 0.05)
    assert expired == ["kept"]


async def test_items_armed_together_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    timers: list[Any] = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return real_call_at(when, callback, *args)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        timeouts: Timeouts[int] = Timeouts(loop, lambda item: None)
        for n in range(1000):
            armed_in = timeouts.arm(str(n), n, 30.0)
            if n % 2:
                timeouts.disarm(str(n), armed_in)  # ended early
    finally:
        del loop.call_at  # type: ignore[method-assign]
    # A thousand jobs armed within a few milliseconds: a slice or two.
    assert 1 <= len(timers) <= 3, len(timers)
    assert len(timeouts) == 500


async def test_jobs_that_ended_leave_no_timer_behind() -> None:
    """Long timeouts, jobs that end at once: nothing piles up per slice."""
    loop = asyncio.get_running_loop()
    timeouts: Timeouts[int] = Timeouts(loop, lambda item: None)
    for n in range(50):
        armed_in = timeouts.arm(str(n), n, 3600.0)
        timeouts.disarm(str(n), armed_in)
        await asyncio.sleep(GRAIN)
    assert timeouts.slices() == 0 and len(timeouts) == 0


async def test_a_stopped_worker_is_not_kept_alive_by_its_jobs_timeouts() -> None:
    import gc
    import weakref

    from conveyor import Conveyor

    app = Conveyor("memory://")

    @app.job("probe", timeout=3600)
    async def probe(payload: Any) -> None:
        return None

    async with app:
        job = await app.enqueue("probe", {})
        worker = app.worker(concurrency=2, scheduler=False)
        async with worker:
            await app.wait(job.id, timeout=10)
        gone = weakref.ref(worker)
        del worker
        gc.collect()
        assert gone() is None
