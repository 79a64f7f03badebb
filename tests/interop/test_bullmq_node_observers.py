"""Node's observers of a queue that conveyor works (bullmq:// backend): Bull
Board's JSON API lists conveyor's results and failures, and a QueueEvents
hears conveyor's enqueues, runs, progress, results and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Conveyor, JobContext, JobState, Permanent

pytestmark = [pytest.mark.bullmq, pytest.mark.slow]

NodeBull = Callable[..., dict[str, Any]]  # runs bull.mjs (conftest.py: node_bull)
BoardGet = Callable[[str], Awaitable[Any]]  # GETs Bull Board's API (conftest.py: bull_board)


@pytest.fixture
def worked(bull_queue: tuple[str, dict[str, Any]]) -> tuple[Conveyor, dict[str, Any]]:
    """An app on the test's queue (and bull.mjs's spec of it) with jobs
    "double" (a log line, progress, a result), "reject" (raises, retried
    once after 50 ms) and "refuse" (fails at once, retries left)."""
    url, spec = bull_queue
    app = Conveyor(url)

    @app.job("double")
    async def double(payload: dict[str, int], ctx: JobContext) -> dict[str, int]:
        ctx.log("doubling", n=payload["n"])
        await ctx.progress(50)
        return {"double": 2 * payload["n"]}

    @app.job("reject", retries=1, backoff=0.05)
    async def reject(payload: dict[str, int]) -> None:
        raise ValueError(f"bad input {payload['n']}")

    @app.job("refuse", retries=3)
    async def refuse(payload: dict[str, int]) -> None:
        raise Permanent(f"never {payload['n']}")

    return app, spec


async def test_bull_board_lists_a_conveyor_workers_results_and_failures(
    worked: tuple[Conveyor, dict[str, Any]], bull_board: BoardGet
) -> None:
    app, spec = worked
    async with app:
        doubled = [await app.enqueue("double", {"n": n}) for n in (1, 2, 3)]
        rejected = [await app.enqueue("reject", {"n": n}) for n in (4, 5)]
        async with app.worker(concurrency=2, poll_interval=0.05):
            done = [await app.wait(job.id, timeout=20) for job in doubled + rejected]
        await app.enqueue("double", {"n": 6}, delay=3600)
        await app.enqueue("double", {"n": 7})
    assert [job.state for job in done] == [JobState.COMPLETED] * 3 + [JobState.FAILED] * 2

    queue = spec["queue"]
    listing = await bull_board(f"/api/queues?activeQueue={queue}&status=completed&jobsPerPage=50")
    (board_queue,) = listing["queues"]
    assert board_queue["name"] == queue
    counts = board_queue["counts"]
    assert {state: counts[state] for state in ("active", "waiting", "delayed")} == {
        "active": 0,
        "waiting": 1,
        "delayed": 1,
    }
    assert (counts["completed"], counts["failed"]) == (3, 2)
    completed = {job["id"]: job for job in board_queue["jobs"]}
    assert set(completed) == {job.id for job in doubled}
    for n, job in enumerate(doubled, start=1):
        shown = completed[job.id]
        assert (shown["name"], shown["data"], shown["returnValue"]) == (
            "double",
            {"n": n},
            {"double": 2 * n},
        )
        assert (shown["attempts"], shown["isFailed"]) == (1, False)
        assert shown["finishedOn"] >= shown["processedOn"] >= shown["timestamp"]

    listing = await bull_board(f"/api/queues?activeQueue={queue}&status=failed&jobsPerPage=50")
    failed = {job["id"]: job for job in listing["queues"][0]["jobs"]}
    assert set(failed) == {job.id for job in rejected}
    for n, job in zip((4, 5), rejected, strict=True):
        shown = failed[job.id]
        assert shown["failedReason"] == f"ValueError: bad input {n}"
        assert (shown["attempts"], shown["isFailed"]) == (2, True)
        assert shown["stacktrace"][0].startswith("Traceback (most recent call last)")
        assert shown["stacktrace"][0].rstrip().endswith(f"ValueError: bad input {n}")

    # One job's own page and its log lines, as the UI opens them.
    detail = await bull_board(f"/api/queues/{queue}/{doubled[0].id}")
    assert (detail["status"], detail["job"]["returnValue"]) == ("completed", {"double": 2})
    logs = await bull_board(f"/api/queues/{queue}/{doubled[0].id}/logs")
    assert '"msg":"doubling"' in logs[0] and '"n":1' in logs[0]


def heard_by_job(events: list[dict[str, Any]], job_id: str) -> list[str]:
    return [event["event"] for event in events if event.get("jobId") == job_id]


async def test_node_queue_events_hear_a_conveyor_worker(
    worked: tuple[Conveyor, dict[str, Any]], node_bull: NodeBull
) -> None:
    app, spec = worked
    async with app:
        # Claimed by a worker that is lost at once: its lease expires.
        lost = await app.enqueue("double", {"n": 0})
        assert [job.id for job in await app.backend.claim(["default"], 1, 0.1)] == [lost.id]
        doubled = await app.enqueue("double", {"n": 1})
        urgent = await app.enqueue("double", {"n": 2}, priority=1)
        rejected = await app.enqueue("reject", {"n": 3})
        refused = await app.enqueue("refuse", {"n": 5})
        later = await app.enqueue("double", {"n": 4}, delay=3600)
        assert await app.cancel(later.id)
        # Node listens while conveyor works: from the stream's start, so
        # however late Node is up it misses nothing.
        finished = [lost.id, doubled.id, urgent.id, rejected.id, refused.id, later.id]
        listening = asyncio.create_task(
            asyncio.to_thread(
                node_bull, spec, command="listen", finished=finished, timeout_ms=20000
            )
        )
        async with app.worker(concurrency=1, poll_interval=0.05, recover_interval=0.2):
            for job in (lost, doubled, urgent, rejected, refused):
                await app.wait(job.id, timeout=20)
            events = (await listening)["events"]

    # Those running the conveyor handler, in the order BullMQ's worker has them.
    ran = ["added", "waiting", "active", "progress", "completed"]
    assert heard_by_job(events, doubled.id) == ran
    assert heard_by_job(events, urgent.id) == ran
    # BullMQ's stalled check says "waiting" (back in line), then "stalled".
    assert heard_by_job(events, lost.id) == [*ran[:3], "waiting", "stalled", *ran[2:]]
    assert heard_by_job(events, rejected.id) == [
        "added",
        "waiting",
        "active",
        "delayed",  # its retry, after the 50 ms backoff
        "waiting",
        "active",
        "failed",
        "retries-exhausted",
    ]
    # Failed with retries left: no "retries-exhausted" (BullMQ's worker says
    # it only when the last attempt failed).
    assert heard_by_job(events, refused.id) == ["added", "waiting", "active", "failed"]
    assert heard_by_job(events, later.id) == ["added", "delayed", "failed"]

    def heard(job_id: str, name: str) -> dict[str, Any]:
        return next(e for e in events if e["event"] == name and e.get("jobId") == job_id)

    assert heard(doubled.id, "added")["name"] == "double"
    assert heard(doubled.id, "progress")["data"] == 50
    assert heard(doubled.id, "completed")["returnvalue"] == {"double": 2}
    assert heard(urgent.id, "completed")["returnvalue"] == {"double": 4}
    assert heard(rejected.id, "failed")["failedReason"] == "ValueError: bad input 3"
    assert heard(rejected.id, "retries-exhausted")["attemptsMade"] == "2"
    assert heard(refused.id, "failed")["failedReason"].endswith("never 5")
    cancelled = heard(later.id, "failed")
    assert (cancelled["failedReason"], cancelled["prev"]) == ("cancelled", "delayed")
