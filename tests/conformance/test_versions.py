"""Versioned job types on every backend (issue 14, point 3).

A job's version travels with its stored payload (conveyor/versions.py), so it
comes back on every path a backend has: the enqueue's record, a claim, a
lookup. A worker of version 2 migrates a version-1 job before running it; a
worker of version 1 leaves a version-2 job queued, no attempt counted, and
still runs the version-1 jobs queued behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from conveyor import Conveyor, JobContext, JobState, Worker

from .conftest import MakeApp, needs
from .helpers import WAIT
from .test_rolling_deploy import same_store


class GreetV1(BaseModel):
    first: str
    last: str


class GreetV2(BaseModel):
    full_name: str


def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {"full_name": f"{payload['first']} {payload['last']}"}


def register_v1(app: Conveyor, ran: list[tuple[str, Any, int]]) -> None:
    @app.job("greet", retries=0)
    async def greet(payload: GreetV1, ctx: JobContext) -> str:
        ran.append(("v1", payload.first, ctx.job.version))
        return payload.first

    @app.job("done", retries=0)  # what a test enqueues last, to know all ran
    async def done(payload: Any) -> None:
        pass


def register_v2(
    app: Conveyor, ran: list[tuple[str, Any, int]], two_ran: asyncio.Event | None = None
) -> None:
    @app.job("greet", retries=0, version=2, migrations={1: v1_to_v2})
    async def greet(payload: GreetV2, ctx: JobContext) -> str:
        ran.append(("v2", payload.full_name, ctx.job.version))
        if two_ran is not None and len(ran) == 2:
            two_ran.set()
        return payload.full_name

    @app.job("done", retries=0)
    async def done(payload: Any) -> None:
        pass


async def test_the_version_round_trips_and_an_old_payload_is_migrated(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    ran: list[tuple[str, Any, int]] = []
    two_ran = asyncio.Event()  # on a broker without lookup, the only sign
    new = await make_app()
    old = await same_store(make_app, new, backend_name)
    register_v2(new, ran, two_ran)
    old.declare("greet", GreetV1, retries=0)
    v1 = await old.enqueue("greet", {"first": "Ada", "last": "Lovelace"})
    v2 = await new.enqueue("greet", GreetV2(full_name="Alan Turing"))
    assert (v1.version, v1.payload) == (1, {"first": "Ada", "last": "Lovelace"})
    assert (v2.version, v2.payload) == (2, {"full_name": "Alan Turing"})
    if new.backend.capabilities.lookup:
        stored = await new.get_job(v2.id)
        assert stored is not None
        assert (stored.version, stored.payload) == (2, {"full_name": "Alan Turing"})
        listed = {job.id: job.version for job in await new.list_jobs(name="greet")}
        assert listed == {v1.id: 1, v2.id: 2}
    async with worker(new, concurrency=1):
        done = await new.enqueue("done")
        if new.backend.capabilities.lookup:
            for job in (v1, v2, done):
                assert (await new.wait(job.id, timeout=WAIT)).state is JobState.COMPLETED
        else:
            await asyncio.wait_for(two_ran.wait(), WAIT)
    assert sorted(ran) == [("v2", "Ada Lovelace", 1), ("v2", "Alan Turing", 2)]


@needs("lookup", "concurrent_claims")
async def test_an_old_worker_leaves_a_newer_version_for_a_new_worker(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    ran: list[tuple[str, Any, int]] = []
    old = await make_app()
    new = await same_store(make_app, old, backend_name)
    register_v1(old, ran)
    register_v2(new, ran)
    newer = await new.enqueue("greet", {"full_name": "Alan Turing"})
    async with worker(old, concurrency=1):
        # Behind the newer job (FIFO): once these ran, the old worker has
        # met the newer one more than once.
        for first in ("Ada", "Grace"):
            job = await old.enqueue("greet", {"first": first, "last": "X"})
            assert (await old.wait(job.id, timeout=WAIT)).state is JobState.COMPLETED
    # (While the old worker holds it a moment, between claim and hand-back,
    # it shows as running; stopping hands it back at once.)
    left = await old.get_job(newer.id)
    assert left is not None
    assert (left.state, left.attempts, left.error, left.version) == (JobState.QUEUED, 0, None, 2)
    async with worker(new, concurrency=1):
        finished = await new.wait(newer.id, timeout=WAIT)
    assert (finished.state, finished.attempts, finished.result) == (
        JobState.COMPLETED,
        1,
        "Alan Turing",
    )
    assert ran == [("v1", "Ada", 1), ("v1", "Grace", 1), ("v2", "Alan Turing", 2)]


@needs("lookup")
async def test_a_payload_shaped_like_the_version_envelope_is_a_payload(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    """A version-1 payload that happens to look like the envelope a newer
    version is stored in (a forwarded webhook's JSON, say) is run as it is,
    at version 1: not read as a version-2 job no worker here may run."""
    seen: list[Any] = []

    @app.job("plain", retries=0)
    async def plain(payload: Any) -> None:
        seen.append(payload)

    shaped = {"__conveyor_version__": 2, "payload": {"a": 1}}
    job = await app.enqueue("plain", shaped)
    assert (job.version, job.payload) == (1, shaped)
    stored = await app.get_job(job.id)
    assert stored is not None and (stored.version, stored.payload) == (1, shaped)
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert seen == [shaped]
