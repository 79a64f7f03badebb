"""Fixtures of the conformance suite: every test here runs on every backend.

`backend_url` (one fresh URL of the backend under test, parametrized over the
backends with their marks, resolved lazily) comes from tests/conftest.py, so
the property tests share the same matrix. This file builds on it:

* `app`: a `Conveyor(backend_url)`, opened, closed after the test. Job types
  are registered per test, on this fresh app.
* `make_app(**options)`: the same with options (`keep_completed=5`, ...).
* `worker(app, **overrides)`: an in-process worker with settings fast enough
  for tests (short heartbeat, recovery and poll intervals).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor import Conveyor, Worker

FAST_WORKER: dict[str, Any] = {
    "concurrency": 4,
    "lease": 2.0,
    "heartbeat_interval": 0.05,
    "recover_interval": 0.05,
    "poll_interval": 0.05,
    "shutdown_timeout": 5.0,
}


def fast_worker(app: Conveyor, **overrides: Any) -> Worker:
    """`app.worker(...)` with fast test settings; `overrides` win."""
    return app.worker(**{**FAST_WORKER, **overrides})


MakeApp = Callable[..., Awaitable[Conveyor]]


@pytest.fixture
async def make_app(backend_url: str) -> AsyncIterator[MakeApp]:
    made: list[Conveyor] = []

    async def make(**options: Any) -> Conveyor:
        conveyor = Conveyor(backend_url, **options)
        made.append(conveyor)
        await conveyor.open()
        return conveyor

    yield make
    for conveyor in made:
        await conveyor.close()
        # The blocking twins start a helper loop thread: stop and close it so
        # no loop is left for the garbage collector to warn about.
        await asyncio.to_thread(conveyor.portal.stop)


@pytest.fixture
async def app(make_app: MakeApp) -> Conveyor:
    return await make_app()


@pytest.fixture
def worker() -> Callable[..., Worker]:
    return fast_worker
