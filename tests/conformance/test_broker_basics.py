"""What every backend does, seen from the handlers alone.

These tests never look a job up, so they also run on a broker without a
store (SQS carrying jobs whole), where most of the suite is skipped by
declared capability: they are that backend's proof that enqueue, run,
retries, timeouts, leases kept by heartbeats and the dead-letter set work.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import (
    Backoff,
    Conveyor,
    InvalidPayloadError,
    JobContext,
    NotSupportedError,
    Worker,
)

from .conftest import MakeApp, needs
from .helpers import eventually
from .test_rolling_deploy import old_and_new

FAST_RETRY = Backoff(base=0.05, factor=1.0, jitter=0.0)


async def test_enqueued_jobs_run_once_each(app: Conveyor, worker: Callable[..., Worker]) -> None:
    seen: Counter[int] = Counter()

    @app.job("basic.count")
    async def count(payload: dict[str, int], ctx: JobContext) -> None:
        seen[payload["n"]] += 1

    await app.enqueue("basic.count", {"n": -1})
    # More than one SQS batch (10), so batches go out in several calls.
    await app.enqueue_many([("basic.count", {"n": n}) for n in range(25)])
    async with worker(app, poll_interval=1.0):
        await eventually(lambda: len(seen) == 26, message="26 jobs to run")
        await asyncio.sleep(0.3)  # a duplicate delivery would show up here
    assert set(seen) == {-1, *range(25)}
    assert set(seen.values()) == {1}


async def test_a_failing_job_is_retried_with_its_attempt_counted(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    attempts: list[int] = []

    @app.job("basic.flaky", retries=3, backoff=FAST_RETRY)
    async def flaky(payload: None, ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return "ok"

    await app.enqueue("basic.flaky")
    async with worker(app, poll_interval=1.0):
        await eventually(lambda: attempts == [1, 2, 3], message="three attempts")
        await asyncio.sleep(0.3)
    assert attempts == [1, 2, 3]


async def test_a_handler_that_outlives_its_lease_keeps_it_by_heartbeat(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    runs: list[int] = []

    @app.job("basic.long", retries=0)
    async def long(payload: None, ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        await asyncio.sleep(3.5)

    await app.enqueue("basic.long")
    # A lease of 2 s (SQS: a visibility timeout of 2 s) and a beat every 0.5 s.
    async with worker(app, lease=2.0, heartbeat_interval=0.5, poll_interval=1.0):
        await eventually(lambda: runs, message="the job to start")
        await asyncio.sleep(5.0)
    assert runs == [1], "the job ran again while its first run still held it"


async def test_a_timed_out_attempt_is_retried(app: Conveyor, worker: Callable[..., Worker]) -> None:
    attempts: list[int] = []

    @app.job("basic.slow", retries=1, timeout=0.3, backoff=FAST_RETRY)
    async def slow(payload: None, ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(5)

    await app.enqueue("basic.slow")
    async with worker(app, poll_interval=1.0):
        await eventually(lambda: attempts == [1, 2], message="a second attempt")


@needs("stats")
async def test_a_job_out_of_retries_lands_in_the_failed_set(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    ran: list[int] = []

    @app.job("basic.doomed", retries=0)
    async def doomed(payload: None, ctx: JobContext) -> None:
        ran.append(ctx.attempt)
        raise RuntimeError("always")

    await app.enqueue("basic.doomed")

    async def failed() -> bool:
        return (await app.stats()).get("default", {}).get("failed", 0) == 1

    async with worker(app, poll_interval=1.0):
        await eventually(failed, message="one failed job in the stats")
    assert ran == [1]


@needs("any_delays")
async def test_a_delayed_job_runs_after_its_delay(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    started: list[float] = []

    @app.job("basic.later")
    async def later(payload: None, ctx: JobContext) -> None:
        started.append(time.monotonic())

    sent = time.monotonic()
    await app.enqueue("basic.later", delay=1.5)
    async with worker(app, poll_interval=1.0):
        await eventually(lambda: started, message="the delayed job")
    # SQS counts DelaySeconds in whole seconds: 1.5 s goes out as 2 s.
    assert started[0] - sent >= 1.4


@needs("keys")
async def test_a_repeated_key_runs_the_job_once(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    runs: list[str] = []

    @app.job("basic.keyed")
    async def keyed(payload: dict[str, str], ctx: JobContext) -> None:
        runs.append(payload["v"])

    await app.enqueue("basic.keyed", {"v": "first"}, key="k-1")
    await app.enqueue("basic.keyed", {"v": "second"}, key="k-1")
    await app.enqueue("basic.keyed", {"v": "other"}, key="k-2")
    async with worker(app, poll_interval=1.0):
        await eventually(lambda: len(runs) >= 2, message="two jobs")
        await asyncio.sleep(1.0)
    assert sorted(runs) == ["first", "other"]


async def test_a_payload_over_the_backends_limit_is_refused_before_sending(
    app: Conveyor,
) -> None:
    limit = app.backend.capabilities.max_payload_bytes
    if limit is None:
        pytest.skip("capability: no payload limit of the backend's own (max_payload_bytes)")

    @app.job("basic.big")
    async def big(payload: dict[str, str], ctx: JobContext) -> None:
        pass

    with pytest.raises(InvalidPayloadError, match="bytes"):
        await app.enqueue("basic.big", {"blob": "x" * (limit + 1)})


CALLS: dict[str, Callable[[Conveyor], Any]] = {
    "lookup": lambda app: app.get_job("nope"),
    "list_jobs": lambda app: app.list_jobs(),
    "cancel": lambda app: app.cancel("nope"),
    "retry": lambda app: app.retry("nope"),
    "purge": lambda app: app.purge("completed"),
}


async def test_what_a_backend_cannot_do_is_refused_naming_the_operation(
    app: Conveyor,
) -> None:
    caps = app.backend.capabilities
    missing = [name for name in sorted(CALLS) if not getattr(caps, name)]
    if not missing:
        pytest.skip("capability: the backend declares every one of " + ", ".join(sorted(CALLS)))
    for capability in missing:
        with pytest.raises(NotSupportedError) as refused:
            await CALLS[capability](app)
        message = str(refused.value)
        assert "does not support" in message, capability
        assert caps.hint and caps.hint in message, capability


async def test_a_new_job_type_reaches_a_worker_that_knows_it_in_a_rolling_deploy(
    make_app: MakeApp, backend_name: str, worker: Callable[..., Worker]
) -> None:
    """Old workers (type A only) and new ones (A and B) side by side: every
    job runs once, and B only on a new worker, even where a backend hands an
    old worker B's messages (SQS: it hides them for the others)."""
    old, new, ran = await old_and_new(make_app, backend_name)
    await new.enqueue_many([("B", "b1"), ("A", "a1"), ("B", "b2"), ("A", "a2")])
    async with worker(old, poll_interval=1.0), worker(new, poll_interval=1.0):
        await eventually(lambda: len(ran) == 4, timeout=30, message="four jobs")
        await asyncio.sleep(0.3)
    assert sorted(payload for _, payload in ran) == ["a1", "a2", "b1", "b2"]
    assert all(label == "new" for label, payload in ran if payload.startswith("b")), ran
