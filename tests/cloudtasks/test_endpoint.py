"""Cloud Tasks end to end: jobs enqueued through the emulator, pushed by it
to the endpoint served by uvicorn, their outcomes recorded in the store.

The emulator does not deduplicate task names and retries a failed task at
once (conveyor/backends/cloudtasks/__init__.py), so the key's refusal is
checked where conveyor makes it (the store, before any task is created)
and a retry needs no wait."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from conveyor import Conveyor, JobContext, JobState, Permanent
from conveyor.backends.cloudtasks.backend import CloudTasksBackend, task_id
from conveyor.job import EnqueueFailedError, InvalidOptionError, NotSupportedError

from .conftest import SECRET, Served

pytestmark = pytest.mark.cloudtasks

Serve = Callable[..., Awaitable[Served]]
WAIT = 20.0


def adder(app: Conveyor, calls: dict[str, int]) -> None:
    @app.job("add", retries=3, timeout=10)
    async def add(payload: dict[str, int], ctx: JobContext) -> int:
        calls["add"] = calls.get("add", 0) + 1
        return payload["a"] + payload["b"]

    @app.job("flaky", retries=3, timeout=10)
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return f"ok on attempt {ctx.attempt}"

    @app.job("doomed", retries=5)
    def doomed(payload: dict[str, Any], ctx: JobContext) -> None:
        calls["doomed"] = calls.get("doomed", 0) + 1
        raise Permanent("no point retrying")


async def until_no_tasks(served: Served) -> None:
    deadline = time.monotonic() + WAIT
    while served.pending_tasks():
        assert time.monotonic() < deadline, f"tasks still pending: {served.pending_tasks()}"
        await asyncio.sleep(0.05)


async def test_a_pushed_job_runs_and_its_result_is_stored(served: Serve) -> None:
    s = await served(adder)
    job = await s.app.enqueue("add", {"a": 2, "b": 3})
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == 5
    assert done.attempts == 1
    assert s.calls == {"add": 1}


async def test_a_delayed_job_is_dispatched_when_due(served: Serve) -> None:
    s = await served(adder)
    job = await s.app.enqueue("add", {"a": 1, "b": 1}, delay=2)
    assert job.state is JobState.SCHEDULED
    await asyncio.sleep(0.5)
    assert s.calls == {}  # the emulator holds the task until its schedule time
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.started_at is not None and done.created_at is not None
    assert (done.started_at - done.created_at).total_seconds() >= 1.9


async def test_a_failing_attempt_is_retried_by_cloud_tasks(served: Serve) -> None:
    s = await served(adder)
    job = await s.app.enqueue("flaky", {})
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert done.result == "ok on attempt 2"
    assert done.attempts == 2
    assert [entry["outcome"] for entry in done.history] == ["retrying", "completed"]
    assert "first attempt fails" in (done.history[0]["error"] or "")
    assert s.calls == {"flaky": 2}


async def test_a_permanent_failure_ends_the_task(served: Serve) -> None:
    s = await served(adder)
    job = await s.app.enqueue("doomed", {})
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED
    assert "no point retrying" in (done.error or "")
    await until_no_tasks(s)  # answered 2xx: Cloud Tasks dispatches it no more
    assert s.calls == {"doomed": 1}


async def test_a_key_makes_one_task_and_one_run(served: Serve) -> None:
    s = await served(adder)
    s.pause()  # nothing is dispatched while the tasks are counted
    first = await s.app.enqueue("add", {"a": 1, "b": 2}, key="sum:1")
    second = await s.app.enqueue("add", {"a": 1, "b": 2}, key="sum:1")
    assert second.duplicate and second.id == first.id
    pending = s.pending_tasks()
    assert pending == [f"{s.queue_path}/tasks/{task_id(first)}"]
    assert pending[0].endswith("-k")  # named after the key, so the service refuses a second
    s.resume()
    done = await s.app.wait(first.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED and done.result == 3
    await until_no_tasks(s)
    assert s.calls == {"add": 1}


async def test_a_cancelled_job_is_not_run_when_its_task_arrives(served: Serve) -> None:
    s = await served(adder)
    s.pause()
    job = await s.app.enqueue("add", {"a": 1, "b": 2})
    assert await s.app.cancel(job.id)
    s.resume()
    await until_no_tasks(s)  # the task was dispatched and answered 2xx
    stored = await s.app.get_job(job.id)
    assert stored is not None and stored.state is JobState.CANCELLED
    assert s.calls == {}


async def test_unverified_requests_are_refused(served: Serve) -> None:
    s = await served(adder)
    s.pause()
    job = await s.app.enqueue("add", {"a": 4, "b": 4})
    (name,) = s.pending_tasks()
    task = name.rsplit("/", 1)[1]
    body = json.dumps({"id": job.id, "name": "add", "queue": "default", "task": task})
    genuine = {
        "X-CloudTasks-QueueName": s.queue_path,
        "X-CloudTasks-TaskName": task,
        "X-Conveyor-Secret": SECRET,
    }
    async with httpx.AsyncClient(base_url=s.target.removesuffix("/tasks/")) as http:

        async def post(headers: dict[str, str], content: str = body) -> httpx.Response:
            return await http.post("/tasks/", content=content, headers=headers)

        assert (await post({})).status_code == 400  # no Cloud Tasks headers
        assert (await post({**genuine, "X-Conveyor-Secret": "guess"})).status_code == 401
        no_secret = {k: v for k, v in genuine.items() if k != "X-Conveyor-Secret"}
        assert (await post(no_secret)).status_code == 401
        other_queue = {**genuine, "X-CloudTasks-QueueName": "projects/p/locations/l/queues/x"}
        assert (await post(other_queue)).status_code == 403
        assert (await post({**genuine, "X-CloudTasks-TaskName": "another"})).status_code == 403
        assert (await http.get("/tasks/")).status_code == 405
        stored = await s.app.get_job(job.id)
        assert stored is not None and stored.state is JobState.QUEUED and stored.attempts == 0
        assert s.calls == {}
        # With the secret and the task's own headers, it is a task of ours.
        answer = await post(genuine)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"job": job.id, "outcome": "completed"}
    assert s.calls == {"add": 1}
    s.resume()
    await until_no_tasks(s)  # the emulator's own dispatch finds it done: 2xx, no run
    assert s.calls == {"add": 1}


async def test_what_cloud_tasks_cannot_hold_is_refused(served: Serve) -> None:
    s = await served(adder)
    with pytest.raises(NotSupportedError, match="priorit"):
        await s.app.enqueue("add", {"a": 1, "b": 1}, priority=1)
    with pytest.raises(NotSupportedError, match="delays over"):
        await s.app.enqueue("add", {"a": 1, "b": 1}, delay=31 * 86_400)
    # A queue Cloud Tasks cannot name: refused before anything is stored (not
    # "not enqueued, enqueue them again", which would fail the same way).
    with pytest.raises(InvalidOptionError, match="high_priority"):
        await s.app.enqueue("add", {"a": 1, "b": 1}, queue="high_priority", key="hp")
    assert await s.app.get_job_by_key("hp") is None
    assert s.pending_tasks() == []


async def test_a_failed_job_retried_from_the_store_gets_a_task_of_its_own(served: Serve) -> None:
    s = await served(adder)
    job = await s.app.enqueue("doomed", {}, key="doom:1")
    assert (await s.app.wait(job.id, timeout=WAIT)).state is JobState.FAILED
    await until_no_tasks(s)
    again = await s.app.retry(job.id)
    assert again is not None and again.state is JobState.QUEUED
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED and done.attempts == 2
    assert s.calls == {"doomed": 2}


async def test_a_retry_whose_task_cloud_tasks_refuses_leaves_the_job_retryable(
    served: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store queued the job again, then Cloud Tasks took no task for it:
    # the job must not stay queued with nothing to push it (and retry()
    # refusing it as not failed), but end so that a retry can come again.
    from google.api_core import exceptions

    s = await served(adder)
    job = await s.app.enqueue("doomed", {})
    assert (await s.app.wait(job.id, timeout=WAIT)).state is JobState.FAILED
    await until_no_tasks(s)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise exceptions.ServiceUnavailable("Cloud Tasks is down (injected)")

    monkeypatch.setattr(s.tasks(), "create_task", unavailable)
    with pytest.raises(EnqueueFailedError, match="retry it again"):
        await s.app.retry(job.id)
    stored = await s.app.get_job(job.id)
    assert stored is not None and stored.is_final, stored
    monkeypatch.undo()
    again = await s.app.retry(job.id)
    assert again is not None and again.state is JobState.QUEUED
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.FAILED and s.calls == {"doomed": 2}


async def test_cancel_reaches_a_running_handler_through_the_store(served: Serve) -> None:
    began = asyncio.Event()

    def setup(app: Conveyor, calls: dict[str, int]) -> None:
        @app.job("long", timeout=30)
        async def long(payload: dict[str, Any], ctx: JobContext) -> str:
            calls["long"] = calls.get("long", 0) + 1
            began.set()
            await asyncio.wait_for(ctx.cancelled.wait(), 20)
            return "noticed"

    s = await served(setup, lease=0.6)  # a heartbeat every 0.2 s
    job = await s.app.enqueue("long", {})
    await asyncio.wait_for(began.wait(), WAIT)
    assert await s.app.cancel(job.id)  # running: requested, seen at the next heartbeat
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.CANCELLED
    await until_no_tasks(s)  # answered 2xx
    assert s.calls == {"long": 1}


async def test_the_jobs_timeout_applies_on_the_endpoint(served: Serve) -> None:
    def setup(app: Conveyor, calls: dict[str, int]) -> None:
        @app.job("slow", retries=1, timeout=0.3)
        def slow(payload: dict[str, Any], ctx: JobContext) -> str:  # a sync handler: a thread
            calls["slow"] = calls.get("slow", 0) + 1
            if ctx.attempt == 1:
                time.sleep(1.5)  # past its timeout: the thread is abandoned
            return "quick this time"

    s = await served(setup)
    job = await s.app.enqueue("slow", {})
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED and done.result == "quick this time"
    assert [entry["outcome"] for entry in done.history] == ["timed out", "completed"]
    assert "timed out after 0.3 s" in (done.history[0]["error"] or "")


async def test_a_task_cloud_tasks_refuses_withdraws_its_job(served: Serve) -> None:
    s = await served(adder)
    # The same queue and store, without create=true: queue "other" (Cloud
    # Tasks queue <queue>-other) does not exist, so its task is refused.
    producer = Conveyor(s.url.replace("&create=true", ""))
    producer.declare("add")
    try:
        with pytest.raises(EnqueueFailedError, match="withdrawn from the store") as raised:
            await producer.enqueue("add", {"a": 1, "b": 1}, queue="other", key="once")
        assert len(raised.value.failed) == 1
        assert await producer.get_job_by_key("once") is None  # the key is free again
        again = await producer.enqueue("add", {"a": 1, "b": 1}, key="once")  # default queue
        assert not again.duplicate
        assert (await s.app.wait(again.id, timeout=WAIT)).result == 2
    finally:
        await producer.close()


async def test_a_job_whose_endpoint_died_is_recovered_by_the_next_dispatch(
    served: Serve,
) -> None:
    s = await served(adder)
    s.pause()
    job = await s.app.enqueue("add", {"a": 20, "b": 22})
    # An endpoint that leased the job and died: its lease runs out in 0.3 s.
    backend = s.app.backend
    assert isinstance(backend, CloudTasksBackend)
    (taken,) = await backend._delivery.claim_ids([job.id], 0.3, claim_id="dead-endpoint")
    assert taken is not None and taken.state is JobState.RUNNING
    s.resume()  # dispatches answered 503 while the lease lives, then it is recovered
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED and done.result == 42
    assert done.attempts == 2
    assert [entry["outcome"] for entry in done.history] == ["stalled", "completed"]
    assert s.calls == {"add": 1}


async def test_a_worker_on_the_url_fires_schedules_whose_jobs_are_pushed(served: Serve) -> None:
    s = await served(adder)
    await s.app.recurring("sums", "add", {"a": 3, "b": 4}, every="1 second")
    deadline = time.monotonic() + WAIT
    async with s.app.worker(concurrency=1):  # claims nothing: the scheduler's tick
        while not s.calls.get("add"):
            assert time.monotonic() < deadline, "no scheduled job reached the endpoint"
            await asyncio.sleep(0.05)
    fired = await s.app.list_jobs(name="add")
    done = await s.app.wait(fired[-1].id, timeout=WAIT)  # the first fired
    assert done.state is JobState.COMPLETED and done.result == 7


def lose_create_replies(served: Served, monkeypatch: pytest.MonkeyPatch, after: str) -> None:
    """CreateTask does its work, then its reply is lost: the call raises once
    the endpoint ran the task's job (`after`: an attempt ran, or it ended)."""
    from google.api_core import exceptions

    client = served.app.backend.client  # type: ignore[attr-defined]
    create = client.create_task

    async def lost(queue_path: str, name: str, body: str, **options: Any) -> bool:
        await create(queue_path, name, body, **options)
        job_id = json.loads(body)["id"]
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            job = await served.app.get_job(job_id)
            if job is not None and (job.is_final if after == "ended" else job.attempts >= 1):
                break
            await asyncio.sleep(0.05)
        raise exceptions.DeadlineExceeded("the reply was lost")

    monkeypatch.setattr(client, "create_task", lost)


@pytest.mark.parametrize(("name", "after"), [("add", "ended"), ("flaky", "an attempt ran")])
async def test_a_job_whose_task_went_out_is_not_withdrawn_after_a_lost_reply(
    served: Serve, monkeypatch: pytest.MonkeyPatch, name: str, after: str
) -> None:
    # The task was created and the endpoint ran the job (to its end, or an
    # attempt that failed and waits for Cloud Tasks' retry): the enqueue
    # must not say "withdrawn, enqueue it again", which would run it again.
    s = await served(adder)
    lose_create_replies(s, monkeypatch, after)
    job = await s.app.enqueue(name, {"a": 1, "b": 2}, key="once")
    monkeypatch.undo()
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED
    assert s.calls == {name: 1 if name == "add" else 2}


async def test_a_task_created_whose_reply_was_lost_is_kept_not_withdrawn(
    served: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task was created but not dispatched yet (the queue is paused) when
    # the reply was lost: the call is made again under the same name, which
    # finds it ours, so the job is enqueued (withdrawing it would leave a
    # task whose name Google keeps taken for an hour: the key could not be
    # used again meanwhile).
    from google.api_core import exceptions

    s = await served(adder)
    s.pause()
    tasks = s.tasks()
    create = tasks.create_task
    lost: list[str] = []

    def lose_first_reply(*args: Any, **kwargs: Any) -> Any:
        made = create(*args, **kwargs)
        if not lost:
            lost.append(made.name)
            raise exceptions.DeadlineExceeded("the reply was lost")
        return made

    monkeypatch.setattr(tasks, "create_task", lose_first_reply)
    job = await s.app.enqueue("add", {"a": 1, "b": 2}, key="kept")
    # (Google would answer the second call ALREADY_EXISTS, the task ours by
    # its body; the emulator makes a second task of the same name, which
    # finds the job taken or done: one run all the same.)
    assert lost and lost[0] in s.pending_tasks()
    s.resume()
    done = await s.app.wait(job.id, timeout=WAIT)
    assert done.state is JobState.COMPLETED and s.calls == {"add": 1}


async def test_a_producer_that_may_only_create_tasks_enqueues(
    served: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # roles/cloudtasks.enqueuer creates tasks but may not read queues or
    # tasks: the queue check at open is skipped, and a queue that does not
    # exist is told by CreateTask itself.
    from google.api_core import exceptions

    s = await served(adder)
    producer = Conveyor(s.url.replace("create=true", "create=false"))
    adder(producer, {})
    tasks = producer.backend.client._tasks()  # type: ignore[attr-defined]

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise exceptions.PermissionDenied("the caller may not (injected)")

    monkeypatch.setattr(tasks, "get_queue", denied)
    monkeypatch.setattr(tasks, "get_task", denied)
    async with producer:
        job = await producer.enqueue("add", {"a": 2, "b": 2})
        done = await s.app.wait(job.id, timeout=WAIT)
        assert done.state is JobState.COMPLETED and done.result == 4
        with pytest.raises(EnqueueFailedError, match="does not exist"):
            await producer.enqueue("add", {"a": 1, "b": 1}, queue="nowhere")
