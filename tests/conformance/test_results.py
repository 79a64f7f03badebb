"""Payloads and results are JSON; pydantic payloads are validated on enqueue
and again on run; progress and `ctx.log` lines are kept on the job."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from conveyor import Conveyor, JobContext, JobState
from conveyor.backends.base import NewJob
from conveyor.job import new_job_id

from .conftest import needs
from .helpers import WAIT, eventually, wait_event, wait_thread_event

pytestmark = needs("lookup")


class Welcome(BaseModel):
    to: str
    name: str


class Receipt(BaseModel):
    sent: bool
    to: str


async def test_returned_value_is_stored(app: Conveyor, worker) -> None:
    @app.job("calc")
    async def calc(payload: dict) -> dict:
        return {"sum": sum(payload["xs"]), "nested": [1, "two", None, {"x": 1.5}]}

    job = await app.enqueue("calc", {"xs": [1, 2, 3]})
    assert job.payload == {"xs": [1, 2, 3]}
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == {"sum": 6, "nested": [1, "two", None, {"x": 1.5}]}
    assert done.error is None
    assert done.finished_at is not None and done.started_at is not None
    assert done.finished_at >= done.started_at >= done.created_at
    assert (await app.get_job(job.id)).result == done.result


async def test_none_and_scalar_results(app: Conveyor, worker) -> None:
    @app.job("echo")
    async def echo(payload: Any) -> Any:
        return payload

    jobs = await app.enqueue_many([("echo", None), ("echo", 3), ("echo", "s"), ("echo", [])])
    async with worker(app):
        results = [(await app.wait(j.id, timeout=WAIT)).result for j in jobs]
    assert results == [None, 3, "s", []]


async def test_pydantic_payload_and_result(app: Conveyor, worker) -> None:
    seen: list[Any] = []

    @app.job("email.welcome")
    async def welcome(payload: Welcome, ctx: JobContext) -> Receipt:
        seen.append(payload)
        return Receipt(sent=True, to=payload.to)

    job = await app.enqueue("email.welcome", {"to": "a@b.c", "name": "A"})
    typed = await welcome.enqueue(Welcome(to="d@e.f", name="D"))
    assert typed.payload == {"to": "d@e.f", "name": "D"}
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
        done_typed = await app.wait(typed.id, timeout=WAIT)
    assert all(isinstance(p, Welcome) for p in seen)
    assert done.result == {"sent": True, "to": "a@b.c"}
    assert done_typed.result == {"sent": True, "to": "d@e.f"}


async def test_typed_enqueue_many(app: Conveyor, worker) -> None:
    @app.job("email.welcome")
    async def welcome(payload: Welcome) -> str:
        return payload.name

    jobs = await welcome.enqueue_many([Welcome(to="x", name="X"), Welcome(to="y", name="Y")])
    assert len(jobs) == 2
    async with worker(app):
        results = [(await app.wait(j.id, timeout=WAIT)).result for j in jobs]
    assert results == ["X", "Y"]


async def test_payload_revalidated_on_run(app: Conveyor, worker) -> None:
    """A stored payload that no longer fits the model (the model changed, or
    someone wrote it by hand) fails the job at once with a clear error."""

    @app.job("email.welcome", retries=0)
    async def welcome(payload: Welcome) -> None:
        raise AssertionError("must not run with a bad payload")

    @app.job("raw")
    async def raw(payload: Any) -> None:
        return None

    # Store a bad payload under the right name by going around the facade's check.
    now = time.time()
    bad = NewJob(
        id=new_job_id(),
        name="email.welcome",
        queue="default",
        payload='{"to": "x"}',
        priority=0,
        max_retries=3,  # retrying cannot help: it must fail at once
        timeout=30.0,
        key=None,
        created_at=now,
        run_at=now,
    )
    (stored,) = await app.backend.enqueue([bad])
    async with worker(app):
        done = await app.wait(stored.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert "name" in done.error  # the missing field is named


async def test_non_json_result_fails_the_job_with_a_clear_error(app: Conveyor, worker) -> None:
    @app.job("weird", retries=0)
    async def weird(payload: Any) -> Any:
        return {"when": datetime(2024, 1, 1), "items": {1, 2}}

    job = await app.enqueue("weird", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert "JSON" in done.error
    assert "result" in done.error
    assert done.result is None


async def test_non_json_result_is_not_retried(app: Conveyor, worker) -> None:
    """The handler ran to the end (its side effects happened); only its return
    value is bad. Running it again cannot fix that and repeats the side
    effects, so the job fails at once whatever its retries."""
    runs: list[int] = []

    @app.job("weird", retries=3, backoff=0.01)
    async def weird(payload: Any, ctx: JobContext) -> Any:
        runs.append(ctx.attempt)
        return object()

    job = await app.enqueue("weird", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert "JSON" in done.error
    assert done.attempts == 1
    assert runs == [1]


async def test_nan_result_is_not_json(app: Conveyor, worker) -> None:
    @app.job("nan", retries=0)
    async def nan(payload: Any) -> float:
        return float("nan")

    job = await app.enqueue("nan", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert "JSON" in done.error


async def test_progress_is_stored_while_running(app: Conveyor, worker) -> None:
    release = asyncio.Event()
    reported = asyncio.Event()

    @app.job("steps", timeout=None)
    async def steps(payload: Any, ctx: JobContext) -> str:
        await ctx.progress(25)
        await ctx.progress(50)
        reported.set()
        await release.wait()
        return "ok"

    job = await app.enqueue("steps", {})
    assert job.progress == 0
    async with worker(app):
        await wait_event(reported)
        mid = await app.get_job(job.id)
        assert mid.state is JobState.RUNNING
        assert mid.progress == 50
        release.set()
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.progress == 100


async def test_progress_from_a_sync_handler(app: Conveyor, worker) -> None:
    release = threading.Event()
    reported = threading.Event()

    @app.job("steps_sync", timeout=None)
    def steps(payload: Any, ctx: JobContext) -> None:
        ctx.progress_sync(30)
        reported.set()
        release.wait(10)

    job = await app.enqueue("steps_sync", {})
    async with worker(app):
        await wait_thread_event(reported)
        assert (await app.get_job(job.id)).progress == 30
        release.set()
        await app.wait(job.id, timeout=WAIT)


async def test_progress_out_of_range_is_an_error_in_the_handler(app: Conveyor, worker) -> None:
    @app.job("overshoot", retries=0)
    async def overshoot(payload: Any, ctx: JobContext) -> None:
        await ctx.progress(150)

    job = await app.enqueue("overshoot", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert "progress" in done.error


async def test_log_lines_are_kept_on_the_job(app: Conveyor, worker) -> None:
    release = asyncio.Event()
    logged = asyncio.Event()

    @app.job("chatty", timeout=None)
    async def chatty(payload: Any, ctx: JobContext) -> None:
        ctx.log("starting", step=1)
        ctx.log("sending", to="a@b.c")
        logged.set()
        await release.wait()
        ctx.log("done", ok=True)

    job = await app.enqueue("chatty", {})
    async with worker(app):
        await wait_event(logged)

        async def flushed() -> Any:  # by the next heartbeat
            current = await app.get_job(job.id)
            return len(current.logs) >= 2 and current

        mid = await eventually(flushed, message="log lines flushed by a heartbeat")
        assert [e["msg"] for e in mid.logs] == ["starting", "sending"]
        release.set()
        done = await app.wait(job.id, timeout=WAIT)
    assert [e["msg"] for e in done.logs] == ["starting", "sending", "done"]
    assert done.logs[0]["step"] == 1
    assert done.logs[1]["to"] == "a@b.c"
    assert done.logs[2]["ok"] is True
    assert all(isinstance(e["at"], float) for e in done.logs)


async def test_logs_of_failed_and_sync_jobs_are_kept(app: Conveyor, worker) -> None:
    @app.job("fails", retries=0)
    async def fails(payload: Any, ctx: JobContext) -> None:
        ctx.log("about to fail")
        raise RuntimeError("x")

    @app.job("sync_logs")
    def sync_logs(payload: Any, ctx: JobContext) -> None:
        ctx.log("from a thread", n=3)

    a = await app.enqueue("fails", {})
    b = await app.enqueue("sync_logs", {})
    async with worker(app):
        done_a = await app.wait(a.id, timeout=WAIT)
        done_b = await app.wait(b.id, timeout=WAIT)
    assert [e["msg"] for e in done_a.logs] == ["about to fail"]
    assert [(e["msg"], e["n"]) for e in done_b.logs] == [("from a thread", 3)]


async def test_context_fields(app: Conveyor, worker) -> None:
    seen: dict[str, Any] = {}

    @app.job("introspect")
    async def introspect(payload: Any, ctx: JobContext) -> None:
        seen.update(
            job_id=ctx.job_id,
            attempt=ctx.attempt,
            name=ctx.job.name,
            state=ctx.job.state,
            cancelled=ctx.cancelled.is_set(),
            is_cancelled=ctx.is_cancelled(),
        )

    job = await app.enqueue("introspect", {})
    async with worker(app):
        await app.wait(job.id, timeout=WAIT)
    assert seen == {
        "job_id": job.id,
        "attempt": 1,
        "name": "introspect",
        "state": JobState.RUNNING,
        "cancelled": False,
        "is_cancelled": False,
    }


async def test_handler_without_ctx_parameter(app: Conveyor, worker) -> None:
    @app.job("one_arg")
    def one_arg(payload: int) -> int:
        return payload * 2

    job = await app.enqueue("one_arg", 21)
    async with worker(app):
        assert (await app.wait(job.id, timeout=WAIT)).result == 42


async def test_job_record_fields(app: Conveyor) -> None:
    priority = 2 if app.backend.capabilities.priorities else 0

    @app.job("rec", retries=4, priority=priority, queue="q1")
    async def rec(payload: Any) -> None:
        return None

    job = await app.enqueue("rec", {"a": 1}, key="k-1")
    stored = await app.get_job(job.id)
    for record in (job, stored):
        assert record.name == "rec"
        assert record.queue == "q1"
        assert record.payload == {"a": 1}
        assert record.state is JobState.QUEUED
        assert record.attempts == 0
        assert record.max_retries == 4
        assert record.priority == priority
        assert record.key == "k-1"
        assert record.result is None and record.error is None
        assert record.progress == 0
        assert record.created_at is not None and record.created_at.tzinfo is not None
        assert record.run_at is not None
        assert record.started_at is None and record.finished_at is None
    assert stored.id == job.id


@needs("concurrent_claims")
async def test_job_without_a_handler_in_the_worker_waits_and_is_reported(
    app: Conveyor, worker
) -> None:
    """A producer knows a job type the worker's app does not (an old deploy):
    the worker leaves the job queued, untouched, for a worker that knows it,
    and `unserved()` names it rather than it being failed or stuck unseen."""

    @app.job("ghost", retries=0)
    async def ghost(payload: Any) -> None:
        return None

    @app.job("known")
    async def known(payload: Any) -> None:
        return None

    job = await app.enqueue("ghost", {})
    behind = await app.enqueue("known", {})  # claimed after "ghost", were it claimable
    app.registry.pop("ghost")
    async with worker(app, queues=["default"]):
        assert (await app.wait(behind.id, timeout=WAIT)).state is JobState.COMPLETED
        assert await app.unserved() == {"default": {"ghost": 1}}
    stored = await app.get_job(job.id)
    assert (stored.state, stored.attempts, stored.error) == (JobState.QUEUED, 0, None)
