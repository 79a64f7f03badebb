"""recurring() on a schedule that exists reads it and writes it back: a tick
a scheduler fires in between must stay fired. Every worker calls it at its
start for @app.cron / @app.every functions (the same definition again), and
seed scripts at deploy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.scheduler import Scheduler


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, sqlite_urls: Callable[[], str]) -> str:
    return "memory://" if request.param == "memory" else sqlite_urls()


@pytest.mark.parametrize("changed", [False, True])
async def test_a_tick_fired_during_recurring_stays_fired(url: str, changed: bool) -> None:
    app = Conveyor(url)

    @app.job("tick.job")
    async def tick_job(payload: Any) -> None:
        return None

    async with app:
        await app.recurring("r", "tick.job", {}, every=3600)
        backend: Any = app.backend
        record = await backend.schedule_get("r")
        due = record.next_run - 3600 - 5  # fell due a moment ago
        record.next_run = due
        await backend.schedule_put(record)
        scheduler = Scheduler(backend, app.registry, app.events)
        read = backend.schedule_get
        fired: list[int] = []

        async def read_then_a_scheduler_fires(name: str) -> Any:
            got = await read(name)
            backend.schedule_get = read  # once
            fired.append(await scheduler.tick())
            return got

        backend.schedule_get = read_then_a_scheduler_fires
        # the same definition, or a new payload: the timing is the same
        await app.recurring("r", "tick.job", {"v": 2} if changed else {}, every=3600)
        assert fired == [1]
        after = await read("r")
        assert after.next_run > due  # not back at the tick just fired
        assert await scheduler.tick() == 0  # so nothing fires twice
        assert after.payload == ('{"v":2}' if changed else "{}")
