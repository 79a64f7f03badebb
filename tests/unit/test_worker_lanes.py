"""The worker's two claim lanes (Capabilities.claim_lanes): on a backend that
asks for them, a busy worker keeps two exchanges in flight, never holds more
jobs than its room (concurrency + prefetch), runs every job once, and stops
cleanly with an exchange in flight; a backend that does not ask keeps one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends.base import Outcome, Retention
from conveyor.backends.memory import MemoryBackend
from conveyor.job import Job
from conveyor.worker import Worker


class SlowMemory(MemoryBackend):
    """The memory backend with a round trip's delay on every claim, which
    records how many claims were in flight at once and the most jobs the
    worker held or had asked for at any claim."""

    def __init__(self, lanes: int) -> None:
        super().__init__()
        self.capabilities = replace(self.capabilities, claim_lanes=lanes)
        self.worker: Worker | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.asked = 0  # jobs asked for by the claims in flight
        self.most_held = 0
        self.both_in_flight = asyncio.Event()

    async def _slow_claim(self, limit: int, claim: Any) -> Any:
        assert self.worker is not None
        stats = self.worker.stats()
        self.in_flight += 1
        self.asked += limit
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight == 2:
            self.both_in_flight.set()
        held = stats["running"] + stats["prefetched"] + self.asked
        self.most_held = max(self.most_held, held)
        try:
            await asyncio.sleep(0.003)
            return await claim
        finally:
            self.in_flight -= 1
            self.asked -= limit
            if self.in_flight < 2:
                self.both_in_flight.clear()

    async def claim(  # type: ignore[override]
        self, queues: Sequence[str], limit: int, lease: float, *args: Any, **kwargs: Any
    ) -> list[Job]:
        claimed: list[Job] = await self._slow_claim(
            limit, super().claim(queues, limit, lease, *args, **kwargs)
        )
        return claimed


def recording_app(backend: MemoryBackend) -> tuple[Conveyor, list[int]]:
    """An app on `backend` whose job "n" records its payload as it runs."""
    app = Conveyor(backend=backend)
    ran: list[int] = []

    @app.job("n")
    async def n(payload: int) -> None:
        ran.append(payload)

    return app, ran


async def drain(lanes: int, concurrency: int, prefetch: int) -> tuple[SlowMemory, list[int]]:
    backend = SlowMemory(lanes)
    app = Conveyor(backend=backend)
    ran: list[int] = []
    all_ran = asyncio.Event()

    @app.job("n")
    async def n(payload: int) -> None:
        ran.append(payload)
        if len(ran) == 300:
            all_ran.set()

    async with app:
        await app.enqueue_many([("n", i) for i in range(300)])
        worker = app.worker(concurrency=concurrency, prefetch=prefetch, scheduler=False)
        backend.worker = worker
        async with worker:
            await asyncio.wait_for(all_ran.wait(), 30)
        assert (await app.stats())["default"].get("completed") == 300
    return backend, ran


@pytest.mark.parametrize(("concurrency", "prefetch"), [(4, 0), (5, 0), (4, 8), (2, 0)])
async def test_two_lanes_overlap_and_never_hold_more_than_the_room(
    concurrency: int, prefetch: int
) -> None:
    backend, ran = await drain(2, concurrency, prefetch)
    assert sorted(ran) == list(range(300))  # each job once
    assert backend.most_in_flight == 2
    assert backend.most_held <= concurrency + prefetch


async def test_a_backend_without_lanes_keeps_one_exchange_in_flight() -> None:
    backend, ran = await drain(1, 4, 0)
    assert sorted(ran) == list(range(300))
    assert backend.most_in_flight == 1


async def test_one_job_of_room_is_one_lane() -> None:
    backend, ran = await drain(2, 1, 0)
    assert sorted(ran) == list(range(300))
    assert backend.most_in_flight == 1


async def test_a_stop_with_both_lanes_in_flight_loses_nothing() -> None:
    """Stopped while its claims are in flight, the worker hands back what
    they bring: every job is either done or queued again, none left running."""
    backend = SlowMemory(2)
    app, ran = recording_app(backend)

    async with app:
        await app.enqueue_many([("n", i) for i in range(300)])
        for _ in range(5):
            worker = app.worker(concurrency=4, scheduler=False)
            backend.worker = worker
            await worker.start()
            await asyncio.wait_for(backend.both_in_flight.wait(), 10)
            await worker.stop()
        stats = (await app.stats())["default"]
        assert stats.get("running", 0) == 0
        assert stats.get("completed", 0) == len(ran) == len(set(ran))
        assert stats.get("completed", 0) + stats.get("queued", 0) == 300


@pytest.mark.parametrize(
    "url",
    [
        "sqs://queue?endpoint_url=http://127.0.0.1:1&region=us-east-1&store=redis://127.0.0.1:6379/3",
        "pubsub://my-project/topic?subscription=subs&ordered=true&store=redis://127.0.0.1:6379/3",
    ],
)
def test_a_broker_with_a_redis_store_keeps_one_lane(url: str) -> None:
    """A broker's claims are its receives, whatever the store: a store's
    lanes are not the broker's (two receives in flight broke the order of a
    group's jobs on ordered Pub/Sub)."""
    from conveyor.backends import from_url

    assert from_url(url).capabilities.claim_lanes == 1


class TwoLanes(MemoryBackend):
    """The memory backend, declaring two claim lanes."""

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = replace(self.capabilities, claim_lanes=2)


class LateReply(TwoLanes):
    """The memory backend with two lanes whose claim replies come late:
    each claim takes its jobs at once and answers `delay` seconds after."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def claim(  # type: ignore[override]
        self, queues: Sequence[str], limit: int, lease: float, *args: Any, **kwargs: Any
    ) -> list[Job]:
        claimed = await super().claim(queues, limit, lease, *args, **kwargs)
        await asyncio.sleep(self.delay)
        return claimed


async def test_burst_is_not_over_while_the_other_lane_brings_work() -> None:
    """A drain whose first lane finds nothing while the second lane's claim,
    sent with the outcome of the job that enqueued more, is in flight: the
    job it brings back runs; the burst is not over while a lane is out."""
    backend = LateReply(0.05)
    app = Conveyor(backend=backend)

    @app.job("first")
    async def first(payload: None) -> None:
        await asyncio.sleep(0.01)  # enqueued after the first lane's next claim took nothing
        await app.enqueue("second", None)

    @app.job("second")
    async def second(payload: None) -> None:
        pass

    async with app:
        await app.enqueue("first", None)
        ran = await asyncio.wait_for(app.drain(concurrency=4), 10)
        assert [job.name for job in ran] == ["first", "second"]
        stats = (await app.stats())["default"]
        assert stats.get("completed") == 2


class SecondLaneHangs(TwoLanes):
    """Two lanes; the first lane's claims answer a moment later, the second
    lane's never do, nor does undoing a claim (a connection gone bad)."""

    def __init__(self) -> None:
        super().__init__()
        self.second_sent = asyncio.Event()

    async def claim(  # type: ignore[override]
        self, queues: Sequence[str], limit: int, lease: float, *args: Any, **kwargs: Any
    ) -> list[Job]:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "conveyor-claim-2":
            self.second_sent.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0.01)
        return await super().claim(queues, limit, lease, *args, **kwargs)

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_second_lane_that_outlives_its_cancel_does_not_fail_the_claim_loop() -> None:
    """Stopped while the second lane's claim hangs and so does the undoing of
    it: the lane is cancelled and left to end by itself; the claim loop ends
    cleanly (it read the exception of a lane still pending, and failed)."""
    backend = SecondLaneHangs()
    app = Conveyor(backend=backend)

    @app.job("n")
    async def n(payload: int) -> None:
        pass

    async with app:
        await app.enqueue_many([("n", i) for i in range(50)])
        worker = app.worker(concurrency=4, scheduler=False)
        await worker.start()
        await asyncio.wait_for(backend.second_sent.wait(), 10)
        claim_loop = worker._loops[0]
        await worker.stop(timeout=0.1)
        await asyncio.wait([claim_loop], timeout=5)
        assert claim_loop.done()
        assert claim_loop.cancelled() or claim_loop.exception() is None


class BothLanesStuck(TwoLanes):
    """Two lanes; the second lane's first sending of outcomes never answers,
    and from then on the first lane's claims do not either."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = asyncio.Event()

    async def claim(  # type: ignore[override]
        self, queues: Sequence[str], limit: int, lease: float, *args: Any, **kwargs: Any
    ) -> list[Job]:
        if self.stuck.is_set():
            await asyncio.Event().wait()
        await asyncio.sleep(0.01)
        return await super().claim(queues, limit, lease, *args, **kwargs)

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        task = asyncio.current_task()
        if not self.stuck.is_set() and task is not None and task.get_name() == "conveyor-claim-2":
            self.stuck.set()
            await asyncio.Event().wait()
        accepted: list[bool] = await super().finish(outcomes, retention)
        return accepted


async def test_a_second_signal_sends_the_outcomes_the_second_lane_was_sending() -> None:
    """A second SIGTERM while both lanes' exchanges hang: stop() gives up on
    the claim loop at once, and its last short flush sends the outcomes the
    second lane had in flight (they were put back only after that flush)."""
    import signal

    backend = BothLanesStuck()
    app, ran = recording_app(backend)

    async with app:
        await app.enqueue_many([("n", i) for i in range(50)])
        worker = app.worker(concurrency=4, scheduler=False)
        await worker.start()
        await asyncio.wait_for(backend.stuck.wait(), 10)
        await asyncio.sleep(0.05)  # the first lane's next claim is sent, and hangs
        worker._on_signal(signal.SIGTERM)
        worker._on_signal(signal.SIGTERM)  # the second: leave at once
        await worker.stop()
        assert worker.stats()["unacknowledged"] == 0
        assert (await app.stats())["default"].get("completed", 0) == len(ran)
