"""Versioned job types (issue 14, point 3): the migration chain, its checks at
registration, the stored envelope, and a worker that leaves a newer version
alone. Producers and workers of different versions share one SQLite file
here; the round trip on every backend is tests/conformance/test_versions.py,
two worker processes tests/acceptance/test_job_versions.py."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import Conveyor, InvalidOptionError, JobContext, JobState
from conveyor.job import VERSION_KEY, Job


class GreetV1(BaseModel):
    first: str
    last: str


class GreetV2(BaseModel):
    full_name: str


class GreetV3(BaseModel):
    full_name: str
    polite: bool


def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {"full_name": f"{payload['first']} {payload['last']}"}


def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "polite": True}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'versions.db'}"


@pytest.fixture
async def producer_v1(url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(url)
    app.declare("greet", GreetV1)
    yield app
    await app.close()


def worker_v3(url: str, seen: list[Any]) -> Conveyor:
    app = Conveyor(url)

    @app.job("greet", version=3, migrations={2: v2_to_v3, 1: v1_to_v2})
    def greet(payload: GreetV3, ctx: JobContext) -> str:
        seen.append((payload, ctx.job.version))
        return f"{'Dear ' if payload.polite else ''}{payload.full_name}"

    return app


async def test_an_old_payload_runs_through_every_migration_in_order(
    url: str, producer_v1: Conveyor
) -> None:
    old = await producer_v1.enqueue("greet", {"first": "Ada", "last": "Lovelace"})
    assert old.version == 1
    seen: list[Any] = []
    app = worker_v3(url, seen)
    newest = await app.enqueue("greet", {"full_name": "Alan Turing", "polite": False})
    assert newest.version == 3
    await app.drain()
    assert seen == [
        (GreetV3(full_name="Ada Lovelace", polite=True), 1),
        (GreetV3(full_name="Alan Turing", polite=False), 3),
    ]
    done = await app.get_job(old.id)
    assert done is not None
    # The record keeps the payload and version it was enqueued with.
    assert (done.state, done.result, done.version) == (JobState.COMPLETED, "Dear Ada Lovelace", 1)
    assert done.payload == {"first": "Ada", "last": "Lovelace"}
    await app.close()


async def test_a_middle_version_starts_its_chain_where_it_stands(url: str) -> None:
    producer = Conveyor(url)
    producer.declare("greet", GreetV2, version=2)
    job = await producer.enqueue("greet", {"full_name": "Grace Hopper"})
    assert job.version == 2
    seen: list[Any] = []
    app = worker_v3(url, seen)
    await app.drain()
    assert seen == [(GreetV3(full_name="Grace Hopper", polite=True), 2)]
    await app.close()
    await producer.close()


async def test_a_newer_version_is_left_queued_with_no_attempt_counted(
    url: str, producer_v1: Conveyor
) -> None:
    seen: list[Any] = []
    newer = worker_v3(url, seen)
    v3 = await newer.enqueue("greet", {"full_name": "Alan Turing", "polite": False})
    ran: list[str] = []

    @producer_v1.job("greet")
    def greet(payload: GreetV1) -> None:
        ran.append(payload.first)

    v1 = await producer_v1.enqueue("greet", {"first": "Ada", "last": "Lovelace"})
    await producer_v1.drain()
    # The v1 job behind the newer one ran; the newer one is untouched.
    assert ran == ["Ada"]
    left = await producer_v1.get_job(v3.id)
    assert left is not None
    assert (left.state, left.attempts, left.version) == (JobState.QUEUED, 0, 3)
    assert (await producer_v1.wait(v1.id, timeout=1)).state is JobState.COMPLETED
    await newer.drain()
    assert [version for _, version in seen] == [3]
    await newer.close()


async def test_a_failing_migration_fails_the_job_at_once_naming_the_step(
    url: str, producer_v1: Conveyor
) -> None:
    job = await producer_v1.enqueue("greet", {"first": "Ada", "last": "Lovelace"}, retries=5)
    app = Conveyor(url)

    def broken(payload: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("middle")

    @app.job("greet", version=3, migrations={1: v1_to_v2, 2: broken})
    def greet(payload: GreetV3) -> None:
        raise AssertionError("not reached")

    await app.drain()
    failed = await app.get_job(job.id)
    assert failed is not None
    assert failed.state is JobState.FAILED and failed.attempts == 1  # no retry would help
    assert failed.error is not None
    assert "from version 2 to 3 failed" in failed.error and "middle" in failed.error
    await app.close()


async def test_the_version_is_stored_in_an_envelope_around_the_payload(url: str) -> None:
    seen: list[Any] = []
    app = worker_v3(url, seen)
    job = await app.enqueue("greet", {"full_name": "A", "polite": True})
    await app.close()
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    (stored,) = db.execute("SELECT payload FROM conveyor_jobs WHERE id = ?", (job.id,)).fetchone()
    db.close()
    assert json.loads(stored) == {VERSION_KEY: 3, "payload": {"full_name": "A", "polite": True}}


def test_a_version_1_payload_that_merely_has_the_key_is_a_payload() -> None:
    lookalike = {VERSION_KEY: 2, "payload": {}, "other": 1}
    job = Job(id="1", name="n", queue="q", payload=dict(lookalike), state=JobState.QUEUED)
    assert (job.payload, job.version) == (lookalike, 1)
    wrapped = Job(
        id="2", name="n", queue="q", payload={VERSION_KEY: 2, "payload": [1]}, state=JobState.QUEUED
    )
    assert (wrapped.payload, wrapped.version, wrapped.to_dict()["version"]) == ([1], 2, 2)


def test_a_missing_step_is_refused_at_registration() -> None:
    app = Conveyor("memory://")
    with pytest.raises(InvalidOptionError, match=r"version 3 but has no migration for 2 -> 3"):
        app.job("greet", version=3, migrations={1: v1_to_v2})(lambda payload: None)
    with pytest.raises(InvalidOptionError, match=r"no migration for 1 -> 2, 2 -> 3"):
        app.job("greet", version=3)(lambda payload: None)
    assert "greet" not in app.registry


@pytest.mark.parametrize(
    ("version", "migrations", "message"),
    [
        (0, None, "must be an integer >= 1"),
        (True, None, "must be an integer >= 1"),
        ("2", None, "must be an integer >= 1"),
        (2, {2: v1_to_v2, 1: v1_to_v2}, "key 2 is not a version from 1 to 1"),
        (2, {"1": v1_to_v2}, "key '1' is not a version"),
        (2, {1: "v1_to_v2"}, "must be a function of the payload"),
    ],
)
def test_bad_versions_and_migrations_are_refused(
    version: Any, migrations: Any, message: str
) -> None:
    app = Conveyor("memory://")
    with pytest.raises(InvalidOptionError, match=message):
        app.job("greet", version=version, migrations=migrations)(lambda payload: None)


async def test_a_declaration_needs_no_migrations_but_must_agree_on_the_version() -> None:
    app = Conveyor("memory://")
    declared = app.declare("greet", GreetV2, version=2)
    job = await declared.enqueue(GreetV2(full_name="A"))
    assert job.version == 2
    with pytest.raises(InvalidOptionError, match=r"version 2 != 3"):
        app.declare("greet", GreetV2, version=3)
    with pytest.raises(InvalidOptionError, match=r"version 2 != 1"):
        app.job("greet")(lambda payload: None)

    # Registering the worker's handler completes it, migrations and all.
    @app.job("greet", version=2, migrations={1: v1_to_v2})
    def greet(payload: GreetV2) -> str:
        return payload.full_name

    assert greet is declared and greet.versions.migrations == {1: v1_to_v2}
    with pytest.raises(InvalidOptionError, match="no migration for 1 -> 2"):
        app.declare("other", GreetV2, version=3, migrations={2: v2_to_v3})
    await app.close()


async def test_a_schedule_of_a_versioned_type_shows_its_payload_and_fires_its_version(
    url: str, producer_v1: Conveyor
) -> None:
    """A schedule stores the payload as an enqueue does (in its envelope, so
    each tick's job keeps the version it was scheduled with, and a v1
    schedule stored before an upgrade is migrated); what list_recurring and
    get_recurring show is the payload as given, as Job.payload is."""
    seen: list[Any] = []
    app = worker_v3(url, seen)
    async with app:
        await app.recurring("polite", "greet", {"full_name": "A", "polite": False}, every=60)
        await producer_v1.recurring("old", "greet", {"first": "B", "last": "C"}, every=60)
        shown = {s.name: s.payload for s in await app.list_recurring()}
        assert shown == {
            "polite": {"full_name": "A", "polite": False},
            "old": {"first": "B", "last": "C"},
        }
        polite = await app.get_recurring("polite")
        assert polite is not None and polite.payload == {"full_name": "A", "polite": False}
        assert polite.version == 3
        fired = [await app.run_recurring("polite"), await app.run_recurring("old")]
        assert [job.version for job in fired if job is not None] == [3, 1]
        await app.drain()
    assert sorted((p.full_name, p.polite, v) for p, v in seen) == [
        ("A", False, 3),
        ("B C", True, 1),
    ]
