"""A stored schedule that cannot be planned (a cron text this release's
parser refuses, written by hand or by another release) fails alone: the
scheduler records its error and fires the other due schedules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.scheduler import Scheduler


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, sqlite_urls: Callable[[], str]) -> str:
    return "memory://" if request.param == "memory" else sqlite_urls()


@pytest.mark.parametrize("cron", ["61 * * * *", "@sometimes", "0 0 31 2 *"])
async def test_one_unplannable_schedule_does_not_stop_the_others(url: str, cron: str) -> None:
    app = Conveyor(url)

    @app.job("tick.job")
    async def tick_job(payload: Any) -> None:
        return None

    async with app:
        backend: Any = app.backend
        for name in ("a-broken", "b-fine"):
            await app.recurring(name, "tick.job", {}, every=3600)
            record = await backend.schedule_get(name)
            await backend.schedule_put(replace(record, next_run=record.next_run - 3700))
        broken = await backend.schedule_get("a-broken")
        await backend.schedule_put(replace(broken, cron=cron, every=None))
        assert await Scheduler(backend, app.registry, app.events).tick() == 1
        assert len(await app.list_jobs(name="tick.job")) == 1  # b-fine's tick
        after = await backend.schedule_get("a-broken")
        assert after.last_error and after.next_run > broken.next_run
