"""Recurring schedules on every backend: create/update/list, enable/disable,
delete and cancel_recurring, bad input and the blocking twins (firing is in
test_recurring_firing.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor import (
    Conveyor,
    InvalidOptionError,
    InvalidPayloadError,
    UnknownJobError,
)
from conveyor.scheduler import InvalidScheduleError, Schedule

from .conftest import needs
from .recurring_support import (
    T0,
    Digest,
    jobs_of,
    names,
    register,
    set_next_run,
    store,
)

pytestmark = needs("lookup")

# --------------------------------------------------------------------------- create, update, list


async def test_recurring_creates_and_lists_a_cron_schedule(app: Conveyor) -> None:
    register(app, "email.digest")
    before = time.time()
    made = await app.recurring(
        "daily-digest", "email.digest", {"kind": "daily"}, cron="0 9 * * *", tz="Europe/Berlin"
    )
    assert isinstance(made, Schedule)
    assert made.name == "daily-digest"
    assert made.job_name == "email.digest"
    assert made.payload == {"kind": "daily"}
    assert made.cron == "0 9 * * *"
    assert made.every is None
    assert made.tz == "Europe/Berlin"
    assert made.enabled is True
    assert made.last_run is None
    assert made.last_error is None
    assert made.catch_up == "once"
    assert made.next_run is not None
    assert before < made.next_run.timestamp() <= before + 86400 + 3600
    local = made.next_run.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute, local.second) == (9, 0, 0)

    listed = await app.list_recurring()
    assert listed == [made]
    assert await app.get_recurring("daily-digest") == made
    assert await app.get_recurring("nope") is None


async def test_recurring_creates_an_interval_schedule(app: Conveyor) -> None:
    register(app, "maintenance.cleanup")
    before = time.time()
    made = await app.recurring("cleanup", "maintenance.cleanup", {}, every="1 hour")
    after = time.time()
    assert made.every == timedelta(hours=1)
    assert made.cron is None
    assert made.spec == "every 1 hour"
    assert made.next_run is not None
    assert before + 3600 <= made.next_run.timestamp() <= after + 3600
    assert await app.get_recurring("cleanup") == made


async def test_list_is_ordered_by_name_and_shows_each_schedule(app: Conveyor) -> None:
    register(app, "j")
    for name in ("charlie", "alpha", "bravo"):
        await app.recurring(name, "j", {"n": name}, every=60)
    listed = await app.list_recurring()
    assert names(listed) == ["alpha", "bravo", "charlie"]
    assert [s.payload for s in listed] == [{"n": "alpha"}, {"n": "bravo"}, {"n": "charlie"}]


async def test_updating_the_payload_only_keeps_next_run(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {"v": 1}, every=3600)
    await set_next_run(app, "s", T0)
    updated = await app.recurring("s", "j", {"v": 2}, every=3600, priority=4)
    assert updated.payload == {"v": 2}
    assert updated.next_run == datetime.fromtimestamp(T0, UTC)
    stored = await app.get_recurring("s")
    assert stored == updated
    assert len(await app.list_recurring()) == 1


@pytest.mark.parametrize(
    ("change", "local"),
    [
        ({"cron": "30 9 * * *"}, ("UTC", 9, 30)),
        ({"cron": "0 9 * * *", "tz": "America/New_York"}, ("America/New_York", 9, 0)),
        ({"every": 120}, None),
    ],
    ids=["cron", "tz", "every"],
)
async def test_changing_the_timing_recomputes_next_run(
    app: Conveyor, change: dict[str, Any], local: tuple[str, int, int] | None
) -> None:
    register(app, "j")
    await app.recurring("s", "j", {"v": 1}, cron="0 9 * * *")
    await set_next_run(app, "s", T0)
    before = time.time()
    updated = await app.recurring("s", "j", {"v": 1}, **change)
    assert updated.next_run is not None
    assert updated.next_run.timestamp() > before  # from now, not the old T0
    if local is None:
        assert updated.every == timedelta(seconds=120)
        assert updated.next_run.timestamp() == pytest.approx(before + 120, abs=1.0)
    else:
        zone, hour, minute = local
        assert updated.next_run.timestamp() <= before + 25 * 3600
        there = updated.next_run.astimezone(ZoneInfo(zone))
        assert (there.hour, there.minute) == (hour, minute)
    assert await app.get_recurring("s") == updated


@pytest.mark.parametrize(
    ("cron", "normalised"),
    [
        ("0 9 * * MON-FRI", "0 9 * * MON-FRI"),
        ("0 0 1 JAN,JUL *", "0 0 1 JAN,JUL *"),
        ("@daily", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@weekly", "0 0 * * 0"),
        ("  */15   *  * * *  ", "*/15 * * * *"),
    ],
)
async def test_cron_with_names_and_aliases_is_accepted(
    app: Conveyor, cron: str, normalised: str
) -> None:
    register(app, "j")
    made = await app.recurring("s", "j", {}, cron=cron)
    assert made.cron == normalised
    assert made.next_run is not None
    assert made.next_run.timestamp() > time.time()
    assert made.next_run.second == 0
    assert (await app.get_recurring("s")) == made


@pytest.mark.parametrize(
    ("every", "seconds"),
    [
        (timedelta(minutes=5), 300),
        (90, 90),
        (2.5, 2.5),
        ("30 seconds", 30),
        ("every 5 minutes", 300),
        ("every 1 day", 86400),
    ],
)
async def test_intervals_as_timedelta_number_and_text(
    app: Conveyor, every: Any, seconds: float
) -> None:
    register(app, "j")
    before = time.time()
    made = await app.recurring("s", "j", {}, every=every)
    assert made.every == timedelta(seconds=seconds)
    assert made.next_run is not None
    assert made.next_run.timestamp() == pytest.approx(before + seconds, abs=1.0)
    assert (await app.get_recurring("s")) == made


# ------------------------------------------------------------------- enable, disable, delete


async def test_disable_keeps_it_listed_and_it_does_not_fire(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60)
    await set_next_run(app, "s", T0)
    assert await app.disable_recurring("s") is True
    shown = await app.get_recurring("s")
    assert shown is not None
    assert shown.enabled is False
    assert names(await app.list_recurring()) == ["s"]

    assert await app.scheduler().tick(now=T0 + 3600) == 0
    assert await jobs_of(app, "j") == []
    assert await app.disable_recurring("s") is True  # already disabled: still known
    assert await app.disable_recurring("missing") is False


async def test_recurring_again_keeps_an_operators_disable(app: Conveyor) -> None:
    # A seed script re-run at deploy time must not re-enable what was disabled.
    register(app, "j")
    await app.recurring("s", "j", {"v": 1}, every=60)
    await app.disable_recurring("s")
    again = await app.recurring("s", "j", {"v": 2}, every=60)
    assert again.enabled is False
    assert again.payload == {"v": 2}
    forced = await app.recurring("s", "j", {"v": 2}, every=60, enabled=True)
    assert forced.enabled is True
    assert (await app.recurring("t", "j", {}, every=60)).enabled is True  # new: enabled


async def test_moving_a_schedules_jobs_to_another_queue_keeps_its_state(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60)
    made = await store(app).schedule_get("s")
    await app.disable_recurring("s")
    moved = await app.recurring("s", "j", {}, every=60, queue="elsewhere")
    assert moved.enabled is False  # the operator's disable stays
    after = await store(app).schedule_get("s")
    assert made is not None and after is not None
    assert after.created_at == made.created_at and not after.enabled
    assert '"elsewhere"' in after.options
    assert [s.name for s in await app.list_recurring()] == ["s"]  # once, not in both queues


async def test_enable_recomputes_next_run_from_now_without_a_burst(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("s", "j", {}, every=60, catch_up="all")
    await app.disable_recurring("s")
    # It was off for an hour: sixty ticks were missed while disabled.
    await set_next_run(app, "s", time.time() - 3600)
    before = time.time()
    assert await app.enable_recurring("s") is True
    shown = await app.get_recurring("s")
    assert shown is not None and shown.enabled is True
    assert shown.next_run is not None
    assert shown.next_run.timestamp() == pytest.approx(before + 60, abs=1.0)
    assert await app.scheduler().tick(now=time.time()) == 0
    assert await jobs_of(app, "j") == []
    assert await app.enable_recurring("missing") is False


async def test_delete_stops_it_for_good(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("gone", "j", {}, every=60)
    await app.recurring("kept", "j", {}, every=60)
    await set_next_run(app, "gone", T0)
    assert await app.delete_recurring("gone") is True
    assert await app.get_recurring("gone") is None
    assert names(await app.list_recurring()) == ["kept"]
    assert await app.scheduler().tick(now=T0 + 3600) == 0
    assert await jobs_of(app, "j") == []
    assert await app.delete_recurring("gone") is False
    assert await app.enable_recurring("gone") is False


# --------------------------------------------------------------------------- cancel_recurring


async def seed(app: Conveyor) -> None:
    register(app, "j")
    await app.recurring("a-daily", "j", {}, cron="0 9 * * *", key="seed-a")
    await app.recurring("a-hourly", "j", {}, cron="0 * * * *", key="seed-a")
    await app.recurring("b-daily", "j", {}, cron="0 9 * * *", key="seed-b")
    await app.recurring("b-every", "j", {}, every="5 minutes", key="seed-b")
    await app.recurring("plain", "j", {}, every=300)
    await app.recurring("c-weekly", "j", {}, cron="0 9 * JAN MON", key="seed-c")


@pytest.mark.parametrize(
    ("criteria", "removed"),
    [
        ({"name": "a-daily"}, ["a-daily"]),
        ({"key": "seed-a"}, ["a-daily", "a-hourly"]),
        ({"key": "seed-b"}, ["b-daily", "b-every"]),
        ({"key": "seed-a", "cron": "0 9 * * *"}, ["a-daily"]),
        ({"key": "seed-a", "cron": "@hourly"}, ["a-hourly"]),
        ({"key": "seed-b", "every": timedelta(minutes=5)}, ["b-every"]),
        ({"key": "seed-b", "every": 300}, ["b-every"]),
        ({"name": "plain", "every": "every 5 minutes"}, ["plain"]),
        ({"name": "a-daily", "key": "seed-b"}, []),
        ({"key": "seed-a", "cron": "0 10 * * *"}, []),
        # Names of months and days in any case, as cron reads them.
        ({"key": "seed-c", "cron": "0  9 * jan mon"}, ["c-weekly"]),
        ({"key": "seed-a", "every": 60}, []),
        ({"key": "nope"}, []),
        ({"name": "nope"}, []),
    ],
)
async def test_cancel_recurring_removes_exactly_the_matching_schedules(
    app: Conveyor, criteria: dict[str, Any], removed: list[str]
) -> None:
    await seed(app)
    everything = names(await app.list_recurring())
    assert await app.cancel_recurring(**criteria) == len(removed)
    assert names(await app.list_recurring()) == [n for n in everything if n not in removed]
    assert await app.cancel_recurring(**criteria) == 0


async def test_cancel_recurring_needs_a_name_or_a_key(app: Conveyor) -> None:
    await seed(app)
    before = await app.list_recurring()
    with pytest.raises(InvalidScheduleError):
        await app.cancel_recurring(cron="0 9 * * *")
    with pytest.raises(InvalidScheduleError, match="minute"):
        await app.cancel_recurring(key="seed-a", cron="99 * * * *")
    assert await app.list_recurring() == before


# --------------------------------------------------------------------------- bad input


BAD_INPUT: list[Any] = [
    pytest.param({"cron": "61 * * * *"}, InvalidScheduleError, "minute", id="cron-minute"),
    pytest.param({"cron": "* 24 * * *"}, InvalidScheduleError, "hour", id="cron-hour"),
    pytest.param({"cron": "* * * FOO *"}, InvalidScheduleError, "month", id="cron-month"),
    pytest.param({"cron": "* * *"}, InvalidScheduleError, "5 fields", id="cron-fields"),
    pytest.param({"cron": "@fortnightly"}, InvalidScheduleError, "cron", id="cron-alias"),
    pytest.param({"cron": ""}, InvalidScheduleError, "cron", id="cron-empty"),
    pytest.param(
        {"cron": "0 9 * * *", "tz": "Mars/Olympus"},
        InvalidScheduleError,
        "Mars/Olympus",
        id="tz-unknown",
    ),
    pytest.param(
        {"every": 60, "tz": "Not A Zone"}, InvalidScheduleError, "time zone", id="tz-with-every"
    ),
    pytest.param({"every": 0}, InvalidScheduleError, "above zero", id="every-zero"),
    pytest.param({"every": -5}, InvalidScheduleError, "above zero", id="every-negative"),
    pytest.param(
        {"every": timedelta(0)}, InvalidScheduleError, "above zero", id="every-timedelta-zero"
    ),
    pytest.param({"every": "0 seconds"}, InvalidScheduleError, "above zero", id="every-text-zero"),
    pytest.param(
        {"every": "every fortnight"}, InvalidScheduleError, "interval", id="every-text-bad"
    ),
    pytest.param({"every": True}, InvalidScheduleError, "every", id="every-bool"),
    pytest.param(
        {"cron": "0 9 * * *", "every": 60}, InvalidScheduleError, "exactly one", id="cron-and-every"
    ),
    pytest.param({}, InvalidScheduleError, "exactly one", id="neither"),
    pytest.param(
        {"every": 60, "catch_up": "sometimes"}, InvalidScheduleError, "catch_up", id="catch-up"
    ),
    pytest.param(
        {"every": 60, "max_catch_up": 0}, InvalidScheduleError, "max_catch_up", id="max-catch-up"
    ),
    pytest.param(
        {"every": 60, "misfire_grace": -1},
        InvalidScheduleError,
        "misfire_grace",
        id="misfire-grace",
    ),
    pytest.param({"every": 60, "priority": 5000}, InvalidOptionError, "priority", id="priority"),
    pytest.param({"every": 60, "queue": ""}, InvalidOptionError, "queue", id="queue"),
    pytest.param({"every": 60, "timeout": -1}, InvalidOptionError, "timeout", id="timeout"),
    pytest.param(
        {"every": 60, "job_name": "nobody.registered"},
        UnknownJobError,
        "nobody.registered",
        id="unknown-job",
    ),
    pytest.param(
        {"every": 60, "payload": {"kind": 5}}, InvalidPayloadError, "kind", id="payload-model"
    ),
    pytest.param(
        {"every": 60, "job_name": "plain", "payload": {"x": object()}},
        InvalidPayloadError,
        "JSON",
        id="payload-json",
    ),
    pytest.param({"every": 60, "name": ""}, InvalidScheduleError, "name", id="name"),
]

BAD_INPUT += [
    pytest.param({"every": float("nan")}, InvalidScheduleError, "finite", id="every-nan"),
    pytest.param({"every": float("inf")}, InvalidScheduleError, "finite", id="every-inf"),
    pytest.param(
        {"every": 60, "misfire_grace": float("nan")},
        InvalidScheduleError,
        "misfire_grace",
        id="misfire-grace-nan",
    ),
]


@pytest.mark.parametrize(("given", "error", "message"), BAD_INPUT)
async def test_bad_input_is_refused_and_stores_nothing(
    app: Conveyor, given: dict[str, Any], error: type[Exception], message: str
) -> None:
    @app.job("email.digest")
    async def digest(payload: Digest) -> None: ...

    @app.job("plain")
    async def plain(payload: dict[str, Any]) -> None: ...

    existing = await app.recurring("existing", "email.digest", {"kind": "daily"}, every=60)
    before = await app.list_recurring()
    options = dict(given)
    name = options.pop("name", "new")
    job_name = options.pop("job_name", "email.digest")
    payload = options.pop("payload", {"kind": "weekly"})
    with pytest.raises(error, match=message):
        await app.recurring(name, job_name, payload, **options)
    assert await app.list_recurring() == before
    # An update of an existing schedule with the same bad input changes nothing.
    if name:
        with pytest.raises(error, match=message):
            await app.recurring("existing", job_name, payload, **options)
        assert await app.get_recurring("existing") == existing
    assert await app.list_recurring() == before


# --------------------------------------------------------------------------- blocking twins


async def test_blocking_twins_from_a_thread(app: Conveyor) -> None:
    register(app, "j")

    def sync_code() -> list[Schedule]:
        app.recurring_sync("s", "j", {"n": 1}, every="30 seconds")
        assert app.disable_recurring_sync("s") is True
        shown = app.get_recurring_sync("s")
        assert shown is not None and shown.enabled is False
        assert app.enable_recurring_sync("s") is True
        listed = app.list_recurring_sync()
        assert app.cancel_recurring_sync(name="s", every=30) == 1
        return listed

    listed = await asyncio.to_thread(sync_code)
    assert names(listed) == ["s"]
    assert await app.list_recurring() == []


async def test_listing_jobs_before_any_schedule_fired_returns_nothing(app: Conveyor) -> None:
    # A regression test: on Redis, listing a store that knows no queue yet sent
    # an empty pipeline, which waited forever for zero replies and wedged the
    # connection (fixed in conveyor/backends/redis/resp.py: RespClient.pipeline).
    register(app, "j")
    await app.recurring("s", "j", {}, every=60)
    assert await asyncio.wait_for(app.list_jobs(), timeout=5) == []
    assert await asyncio.wait_for(app.list_jobs(name="j"), timeout=5) == []
    assert await asyncio.wait_for(app.list_jobs(state="queued"), timeout=5) == []
