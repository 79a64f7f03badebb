"""The public API surface and bad input.

Bad input gets a clear exception and stores nothing (DESIGN section 2, last
bullet). The "nothing stored" checks run against every backend through the
`backend_url` fixture of tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import types
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import conveyor
from conveyor import (
    Backoff,
    Conveyor,
    ConveyorError,
    InvalidOptionError,
    InvalidPayloadError,
    JobContext,
    JobState,
    UnknownJobError,
    UnsupportedURLError,
)


class Welcome(BaseModel):
    to: str
    name: str


@pytest.fixture
async def app(backend_url: str) -> AsyncIterator[Conveyor]:
    conveyor_app = Conveyor(backend_url)

    @conveyor_app.job("email.welcome")
    async def welcome(payload: Welcome, ctx: JobContext) -> dict[str, bool]:
        return {"sent": True}

    @conveyor_app.job("report.build")
    def build(payload: dict, ctx: JobContext) -> None:
        return None

    await conveyor_app.open()
    yield conveyor_app
    await conveyor_app.close()
    await asyncio.to_thread(conveyor_app.portal.stop)


async def assert_nothing_stored(app: Conveyor) -> None:
    caps = app.backend.capabilities
    if caps.stats:
        stats = await app.stats()
        assert all(count == 0 for counts in stats.values() for count in counts.values()), stats
    if caps.list_jobs:  # else the counts are all there is to see
        assert await app.list_jobs(limit=1000) == []
    if not caps.stats and not caps.list_jobs:
        # A broker with neither (Pub/Sub without a store): nothing was sent
        # if there is nothing to receive.
        assert await app.backend.claim(["default"], 10, 5.0) == []


GOOD = {"to": "a@b.c", "name": "A"}


# --------------------------------------------------------------------------- public names


def test_all_lists_exactly_the_public_names() -> None:
    """httpx style: everything public in the package namespace is in __all__
    (sorted), and everything in __all__ exists. Submodules and the
    `from __future__` feature do not count."""
    public = sorted(
        name
        for name, value in vars(conveyor).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    )
    assert conveyor.__all__ == public
    for name in conveyor.__all__:
        assert hasattr(conveyor, name), name


def test_pinned_names_of_the_design() -> None:
    for name in ("Conveyor", "JobContext", "JobState", "Permanent", "Job"):
        assert name in conveyor.__all__, name
    assert {s.value for s in JobState} == {
        "scheduled",
        "queued",
        "running",
        "completed",
        "failed",
        "cancelled",
    }
    job_fields = set(conveyor.Job.__dataclass_fields__)
    assert {
        "id",
        "name",
        "queue",
        "payload",
        "state",
        "attempts",
        "max_retries",
        "priority",
        "key",
        "result",
        "error",
        "progress",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
    } <= job_fields
    for attr in ("job_id", "attempt", "log", "progress", "cancelled", "is_cancelled", "job"):
        assert hasattr(JobContext, attr), attr
    for method in (
        "enqueue",
        "enqueue_many",
        "get_job",
        "wait",
        "cancel",
        "retry",
        "stats",
        "list_jobs",
        "purge",
        "worker",
        "on",
        "job",
    ):
        assert callable(getattr(Conveyor, method)), method
    for twin in (
        "enqueue",
        "enqueue_many",
        "get_job",
        "wait",
        "cancel",
        "retry",
        "stats",
        "list_jobs",
        "purge",
    ):
        sync = getattr(Conveyor, f"{twin}_sync")
        assert callable(sync) and not inspect.iscoroutinefunction(sync), twin
        assert sync.__doc__, twin


def test_errors_share_a_base_and_the_builtin_kinds() -> None:
    assert issubclass(UnknownJobError, ConveyorError) and issubclass(UnknownJobError, LookupError)
    assert issubclass(InvalidPayloadError, ValueError)
    assert issubclass(InvalidOptionError, ValueError)
    assert issubclass(UnsupportedURLError, ValueError)
    assert issubclass(conveyor.JobTimeoutError, TimeoutError)
    assert conveyor.PermanentError is conveyor.Permanent


async def test_job_decorator_returns_the_plain_function_still_callable() -> None:
    app = Conveyor("memory://")

    @app.job("add")
    async def add(payload: dict, ctx: Any) -> int:
        """Adds."""
        return payload["a"] + payload["b"]

    @app.job("mul")
    def mul(payload: dict) -> int:
        return payload["a"] * payload["b"]

    assert await add({"a": 1, "b": 2}, None) == 3
    assert mul({"a": 3, "b": 4}) == 12
    assert add.__doc__ == "Adds."
    assert add.name == "add"
    assert app.registry["add"] is add
    assert callable(add.enqueue) and callable(mul.enqueue_sync)


# --------------------------------------------------------------------------- bad input


async def test_unknown_job_name(app: Conveyor) -> None:
    with pytest.raises(UnknownJobError, match=r"email\.welcom\b.*email\.welcome"):
        await app.enqueue("email.welcom", GOOD)
    await assert_nothing_stored(app)


async def test_payload_failing_its_model_names_the_field(app: Conveyor) -> None:
    with pytest.raises(InvalidPayloadError) as info:
        await app.enqueue("email.welcome", {"to": "a@b.c"})
    assert "name" in str(info.value)
    assert "email.welcome" in str(info.value)
    with pytest.raises(InvalidPayloadError, match="to"):
        await app.enqueue("email.welcome", {"to": 5, "name": "A"})
    with pytest.raises(InvalidPayloadError):
        await app.enqueue("email.welcome", "not even a dict")
    await assert_nothing_stored(app)


async def test_typed_enqueue_validates_too(app: Conveyor) -> None:
    welcome = app.registry["email.welcome"]
    with pytest.raises(InvalidPayloadError, match="name"):
        await welcome.enqueue({"to": "a@b.c"})
    with pytest.raises(InvalidPayloadError):
        await welcome.enqueue_many([Welcome(**GOOD), {"to": "x"}])
    await assert_nothing_stored(app)


@pytest.mark.parametrize(
    "payload",
    [
        object(),
        {"when": datetime.now(UTC)},
        {1, 2},
        b"bytes",
        {"x": float("nan")},
        {"x": float("inf")},
    ],
    ids=["object", "datetime", "set", "bytes", "nan", "inf"],
)
async def test_non_json_payload_for_a_dict_handler(app: Conveyor, payload: Any) -> None:
    with pytest.raises(InvalidPayloadError, match="JSON"):
        await app.enqueue("report.build", payload)
    await assert_nothing_stored(app)


@pytest.mark.parametrize("url", ["mysql://localhost/db", "ftp://x", "AMQP+TLS://h"])
def test_unsupported_url_scheme_names_the_scheme(url: str) -> None:
    scheme = url.partition("://")[0].lower()
    with pytest.raises(UnsupportedURLError, match=scheme.replace("+", r"\+")):
        Conveyor(url)


@pytest.mark.parametrize("url", ["not a url", "jobs.db", "://nothing"])
def test_malformed_url(url: str) -> None:
    with pytest.raises(UnsupportedURLError, match="URL"):
        Conveyor(url)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": timedelta(seconds=-5)}, "delay"),
        ({"delay": "10"}, "delay"),
        ({"delay": True}, "delay"),
        ({"run_at": datetime(2030, 1, 1)}, "timezone"),  # naive
        ({"run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"run_at": datetime.now(UTC), "delay": 5}, "either delay or run_at"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retries": True}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -3}, "timeout"),
        ({"timeout": "30"}, "timeout"),
        ({"priority": 1.5}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"priority": False}, "priority"),
        ({"queue": ""}, "queue"),
        ({"queue": 7}, "queue"),
        ({"key": ""}, "key"),
        ({"key": 42}, "key"),
    ],
)
async def test_invalid_options(app: Conveyor, options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        await app.enqueue("email.welcome", GOOD, **options)
    with pytest.raises(InvalidOptionError):
        await app.enqueue_many([("email.welcome", GOOD), ("email.welcome", GOOD, options)])
    await assert_nothing_stored(app)


@pytest.mark.parametrize("delay", [math.nan, math.inf, 1e300], ids=["nan", "inf", "huge"])
async def test_non_finite_delay_is_refused_and_stores_nothing(app: Conveyor, delay: float) -> None:
    with pytest.raises(InvalidOptionError, match="delay"):
        await app.enqueue("email.welcome", GOOD, delay=delay)
    await assert_nothing_stored(app)


async def test_nan_timeout_is_refused(app: Conveyor) -> None:
    with pytest.raises(InvalidOptionError, match="timeout"):
        await app.enqueue("email.welcome", GOOD, timeout=math.nan)
    await assert_nothing_stored(app)


@pytest.mark.parametrize("priority", [2**63, -(2**63) - 1], ids=["too-big", "too-small"])
async def test_out_of_range_priority_is_refused_on_every_backend(
    app: Conveyor, priority: int
) -> None:
    """Not a bare OverflowError from one backend while another accepts it."""
    with pytest.raises(InvalidOptionError, match="priority"):
        await app.enqueue("email.welcome", GOOD, priority=priority)
    with pytest.raises(InvalidOptionError, match="priority"):
        app.job("too.urgent", priority=priority)(lambda payload: None)
    await assert_nothing_stored(app)


async def test_the_documented_priority_range_round_trips(app: Conveyor) -> None:
    from conveyor.options import PRIORITY_RANGE

    if not app.backend.capabilities.priorities:
        pytest.skip("capability: the backend declares priorities=False")
    low, high = PRIORITY_RANGE[0], PRIORITY_RANGE[-1]
    if app.backend.capabilities.min_priority is not None:  # BullMQ's start at 0
        low = app.backend.capabilities.min_priority
    jobs = [await app.enqueue("email.welcome", GOOD, priority=p) for p in (high, low, 0)]
    assert [(await app.get_job(j.id)).priority for j in jobs] == [high, low, 0]
    with pytest.raises(InvalidOptionError, match="priority"):
        await app.enqueue("email.welcome", GOOD, priority=high + 1)
    with pytest.raises(InvalidOptionError, match="priority"):
        await app.enqueue("email.welcome", GOOD, priority=low - 1)


@pytest.mark.parametrize(
    "items",
    [
        [("email.welcome", GOOD), ("nope", {})],
        [("email.welcome", GOOD), ("email.welcome", {"to": "x"})],
        [("report.build", {}), ("report.build", {1, 2})],
        [("email.welcome", GOOD), ("email.welcome", GOOD, {"delay": -1})],
        [("email.welcome", GOOD), ("email.welcome", GOOD, {"colour": "red"})],
        [("email.welcome", GOOD), ["email.welcome", GOOD]],
        [("email.welcome", GOOD), ("email.welcome",)],
        [("email.welcome", GOOD), ("email.welcome", GOOD, {}, "extra")],
    ],
    ids=[
        "unknown-name",
        "bad-payload",
        "non-json",
        "bad-option",
        "unknown-option",
        "not-a-tuple",
        "too-short",
        "too-long",
    ],
)
async def test_enqueue_many_with_one_bad_item_stores_none(app: Conveyor, items: list) -> None:
    with pytest.raises(ConveyorError):
        await app.enqueue_many(items)
    await assert_nothing_stored(app)


async def test_enqueue_many_of_nothing(app: Conveyor) -> None:
    assert await app.enqueue_many([]) == []


def test_invalid_type_defaults_at_registration() -> None:
    app = Conveyor("memory://")

    async def handler(payload: Any) -> None:
        return None

    for options, match in [
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"priority": "x"}, "priority"),
        ({"queue": ""}, "queue"),
        ({"backoff": -1}, "backoff"),
        ({"backoff": "1s"}, "backoff"),
    ]:
        with pytest.raises(InvalidOptionError, match=match):
            app.job("t", **options)(handler)
    assert app.registry == {}


def test_handler_signature_is_checked() -> None:
    app = Conveyor("memory://")
    with pytest.raises(InvalidOptionError, match="payload"):
        app.job("none")(lambda: None)
    with pytest.raises(InvalidOptionError, match="payload"):
        app.job("three")(lambda payload, ctx, extra: None)
    with pytest.raises(InvalidOptionError):
        app.job("")(lambda payload: None)
    assert app.registry == {}


def test_duplicate_job_name_registration() -> None:
    app = Conveyor("memory://")

    @app.job("dup")
    def first(payload: Any) -> None:
        return None

    with pytest.raises(InvalidOptionError, match="dup"):

        @app.job("dup")
        def second(payload: Any) -> None:
            return None

    assert app.registry["dup"].handler is first.handler


def test_unknown_event_name() -> None:
    app = Conveyor("memory://")
    with pytest.raises(InvalidOptionError, match=r"job\.finished.*job\.completed"):
        app.on("job.finished", lambda event: None)
    with pytest.raises(InvalidOptionError):

        @app.on("jobs.failed")
        def cb(event: Any) -> None:
            return None

    assert not app.events.wants("job.finished")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"lease": 0}, "lease"),
        ({"max_stalled": -1}, "max_stalled"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"queues": ["a", ""]}, "queue"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_worker_settings(settings: dict[str, Any], match: str) -> None:
    app = Conveyor("memory://")
    with pytest.raises(InvalidOptionError, match=match):
        app.worker(**settings)


def test_worker_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Conveyor("memory://")
    monkeypatch.setenv("CONVEYOR_CONCURRENCY", "7")
    monkeypatch.setenv("CONVEYOR_QUEUES", "a, b")
    monkeypatch.setenv("CONVEYOR_SHUTDOWN_TIMEOUT", "12")
    from_env = app.worker()
    assert from_env.settings.concurrency == 7
    assert from_env.queues == ("a", "b")
    assert from_env.settings.shutdown_timeout == 12
    code_wins = app.worker(concurrency=3, queues=["c"])
    assert code_wins.settings.concurrency == 3
    assert code_wins.queues == ("c",)
    monkeypatch.setenv("CONVEYOR_CONCURRENCY", "many")
    with pytest.raises(InvalidOptionError, match="CONVEYOR_CONCURRENCY"):
        app.worker()


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "memory://")
    assert Conveyor().url == "memory://"
    monkeypatch.setenv("CONVEYOR_URL", "gopher://x")
    with pytest.raises(UnsupportedURLError, match="gopher"):
        Conveyor()


def test_invalid_backoff() -> None:
    with pytest.raises(InvalidOptionError):
        Backoff(base=-1)
    with pytest.raises(InvalidOptionError):
        Backoff(factor=0.5)
    with pytest.raises(InvalidOptionError):
        Backoff(jitter=2)
    assert Backoff.fixed(2).delay(5) == 2
    delays = [Backoff.exponential(1, 2, 100, 0).delay(n) for n in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 100]
    jittered = [Backoff(base=10, jitter=0.25).delay(1) for _ in range(50)]
    assert all(7.5 <= d <= 12.5 for d in jittered)
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidOptionError, match="finite"):
            Backoff(base=bad)
        with pytest.raises(InvalidOptionError, match="finite"):
            Backoff(maximum=bad)
        with pytest.raises(InvalidOptionError, match="finite"):
            Conveyor("memory://").job("j", backoff=bad)(lambda payload: None)
    # a late attempt is capped, not an overflow
    assert Backoff.exponential(1, 2, 60, 0).delay(1025) == 60
    assert Backoff.exponential(1, 10, 60, 0).delay(10**6) == 60


async def test_purge_running_is_refused(app: Conveyor) -> None:
    if not app.backend.capabilities.purge:
        pytest.skip("capability: the backend declares purge=False")
    with pytest.raises(InvalidOptionError, match="running"):
        await app.purge(JobState.RUNNING)
    with pytest.raises(InvalidOptionError, match="state"):
        await app.purge("finished")


@pytest.mark.parametrize("retries", [-1, 10**20, 1_000_001, True, 2.0, "3"])
def test_retries_out_of_every_backends_range_are_refused(retries: Any) -> None:
    app = Conveyor("memory://")
    with pytest.raises(InvalidOptionError, match="retries must be an integer from 0 to"):
        app.job("j", retries=retries)(lambda payload: None)


async def test_a_listing_beyond_any_backends_integers_is_refused(app: Conveyor) -> None:
    if not app.backend.capabilities.list_jobs:
        pytest.skip("capability: the backend declares list_jobs=False")
    for bad in ({"limit": 10**30}, {"offset": 10**30}, {"limit": -1}, {"limit": 2.5}):
        with pytest.raises(InvalidOptionError, match="limit and offset must be integers"):
            await app.list_jobs(**bad)  # type: ignore[arg-type]
    assert await app.list_jobs(limit=1_000_000_000) == []


def test_a_recurring_misfire_grace_must_be_seconds() -> None:
    app = Conveyor("memory://")

    @app.job("tick")
    async def tick(payload: Any) -> None:
        return None

    for bad in ("60", None, float("nan"), -1):
        with pytest.raises(InvalidOptionError, match="misfire_grace must be"):
            app.recurring_sync(f"t{bad}", "tick", every=60, misfire_grace=bad)
