"""A busy worker never asks for more jobs than it has room for (concurrency +
prefetch), however many claims it keeps in flight (two claim lanes where the
backend declares them: Redis, bullmq://), and runs each job once."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor

from .faults import CLAIM_CALLS
from .helpers import wait_event


class ClaimWatch:
    """Wraps the backend's claim calls: at each call, the jobs the worker
    holds (running and prefetched) plus those asked for by every claim in
    flight, this one included."""

    def __init__(self, backend: Any, held: Callable[[], int]) -> None:
        self.held = held
        self.asked = 0
        self.calls = 0
        self.most = 0
        for name in CLAIM_CALLS:
            method = getattr(backend, name, None)
            if method is not None:
                setattr(backend, name, self._wrap(method))

    def _wrap(self, method: Any) -> Any:
        signature = inspect.signature(method)

        async def watched(*args: Any, **kwargs: Any) -> Any:
            limit = signature.bind(*args, **kwargs).arguments["limit"]
            self.calls += 1
            self.asked += limit
            self.most = max(self.most, self.held() + self.asked)
            try:
                return await method(*args, **kwargs)
            finally:
                self.asked -= limit

        return watched


@pytest.mark.parametrize(("concurrency", "prefetch"), [(4, 0), (3, 4)])
async def test_a_busy_worker_never_asks_for_more_than_its_room(
    app: Conveyor, worker, concurrency: int, prefetch: int
) -> None:
    total = 120
    ran: list[int] = []
    all_ran = asyncio.Event()

    @app.job("n")
    async def n(payload: int) -> None:
        ran.append(payload)
        if len(ran) >= total:
            all_ran.set()

    await app.enqueue_many([("n", i) for i in range(total)])
    w = worker(app, concurrency=concurrency, prefetch=prefetch)
    stats = w.stats
    watch = ClaimWatch(app.backend, lambda: stats()["running"] + stats()["prefetched"])
    async with w:
        await wait_event(all_ran)
    assert watch.calls > 0
    assert watch.most <= concurrency + prefetch
    assert sorted(ran) == list(range(total))
