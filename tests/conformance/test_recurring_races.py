"""Schedules on every backend's schedule store, where two writers meet:
recurring() re-storing a schedule while a scheduler fires it, and a stored
record this release cannot plan among good ones."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.scheduler import Scheduler

from .conftest import needs

pytestmark = needs("lookup")  # a bare broker stores no schedules (as test_recurring.py)

JOB = "tick.job"


def ticking_app(app: Conveyor) -> Any:
    @app.job(JOB)
    async def tick_job(payload: Any) -> None:
        return None

    return app.backend


@pytest.mark.parametrize("changed", [False, True])
async def test_a_tick_fired_during_recurring_stays_fired(app: Conveyor, changed: bool) -> None:
    """recurring() reads the schedule and writes it back (every worker does
    it at its start for @app.cron / @app.every functions, seed scripts at
    deploy): a tick a scheduler fires in between must stay fired."""
    backend = ticking_app(app)
    await app.recurring("r", JOB, {}, every=3600)
    record = await backend.schedule_get("r")
    due = record.next_run - 3600 - 5  # fell due a moment ago
    await backend.schedule_put(replace(record, next_run=due))
    scheduler = Scheduler(backend, app.registry, app.events)
    read = backend.schedule_get
    fired: list[int] = []

    async def read_then_a_scheduler_fires(name: str) -> Any:
        got = await read(name)
        backend.schedule_get = read  # once
        fired.append(await scheduler.tick())
        return got

    backend.schedule_get = read_then_a_scheduler_fires
    try:
        # the same definition, or a new payload: the timing is the same
        await app.recurring("r", JOB, {"v": 2} if changed else {}, every=3600)
    finally:
        del backend.schedule_get
    assert fired == [1]
    after = await backend.schedule_get("r")
    assert after.next_run > due  # not back at the tick just fired
    assert await scheduler.tick() == 0  # so nothing fires twice
    assert after.payload == ('{"v":2}' if changed else "{}")


def before_the_write(backend: Any, meanwhile: Any) -> list[Any]:
    """Runs `meanwhile` once, just before the next schedule write goes out:
    another writer got in between recurring()'s last read and its write."""
    put = backend.schedule_put
    done: list[Any] = []

    async def write(*args: Any, **kwargs: Any) -> Any:
        backend.schedule_put = put  # once
        done.append(await meanwhile())
        return await put(*args, **kwargs)

    backend.schedule_put = write
    return done


@pytest.mark.parametrize("queue", [None, "elsewhere"])
async def test_a_tick_fired_just_before_recurrings_write_stays_fired(
    app: Conveyor, queue: str | None
) -> None:
    """However late the scheduler fires (after every read recurring() makes,
    before its write), the write must not bring the fired tick back; also
    when the new definition moves the schedule's jobs to another queue."""
    backend = ticking_app(app)
    await app.recurring("r", JOB, {}, every=3600)
    record = await backend.schedule_get("r")
    due = record.next_run - 3600 - 5
    await backend.schedule_put(replace(record, next_run=due))
    scheduler = Scheduler(backend, app.registry, app.events)
    fired = before_the_write(backend, scheduler.tick)
    try:
        await app.recurring("r", JOB, {"v": 2}, every=3600, queue=queue)
    finally:
        vars(backend).pop("schedule_put", None)
    assert fired == [1]
    after = await backend.schedule_get("r")
    assert after.next_run > due and after.payload == '{"v":2}'
    assert await scheduler.tick() == 0


@pytest.mark.parametrize("change", ["disable", "enable"])
async def test_an_operators_enable_or_disable_meanwhile_is_kept(app: Conveyor, change: str) -> None:
    """recurring() keeps what an operator chose (enabled=None): a disable (or
    enable) landing between its read and its write must not be undone."""
    ticking_app(app)
    backend = app.backend
    await app.recurring("r", JOB, {}, every=3600, enabled=change == "disable")
    switch = app.disable_recurring if change == "disable" else app.enable_recurring
    before_the_write(backend, lambda: switch("r"))
    try:
        await app.recurring("r", JOB, {"v": 2}, every=3600)
    finally:
        vars(backend).pop("schedule_put", None)
    after = await app.get_recurring("r")
    assert after is not None and after.payload == {"v": 2}
    assert after.enabled is (change == "enable")


@pytest.mark.parametrize("change", ["disable", "enable"])
async def test_an_enable_or_disable_does_not_bring_back_a_schedule_deleted_meanwhile(
    app: Conveyor, change: str
) -> None:
    ticking_app(app)
    backend = app.backend
    await app.recurring("r", JOB, {}, every=3600, enabled=change == "disable")
    before_the_write(backend, lambda: app.delete_recurring("r"))
    try:
        switch = app.disable_recurring if change == "disable" else app.enable_recurring
        assert await switch("r") is False  # it is gone
    finally:
        vars(backend).pop("schedule_put", None)
    assert await app.get_recurring("r") is None


@pytest.mark.parametrize("cron", ["61 * * * *", "@sometimes", "0 0 31 2 *"])
async def test_one_unplannable_schedule_does_not_stop_the_others(app: Conveyor, cron: str) -> None:
    """A stored schedule that cannot be planned (a cron text this release's
    parser refuses, written by hand or by another release) fails alone: the
    scheduler records its error and fires the other due schedules."""
    backend = ticking_app(app)
    for name in ("a-broken", "b-fine"):
        await app.recurring(name, JOB, {}, every=3600)
        record = await backend.schedule_get(name)
        await backend.schedule_put(replace(record, next_run=record.next_run - 3700))
    broken = await backend.schedule_get("a-broken")
    await backend.schedule_put(replace(broken, cron=cron, every=None))
    assert await Scheduler(backend, app.registry, app.events).tick() == 1
    assert len(await app.list_jobs(name=JOB)) == 1  # b-fine's tick
    after = await backend.schedule_get("a-broken")
    assert after.last_error and after.next_run > broken.next_run
