"""stats, jobs ls/show, cancel, retry and purge on a SQLite file with a few jobs."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor import Conveyor, JobContext, JobState, Permanent

from .helpers import error_line, invoke

pytestmark = pytest.mark.slow


@dataclass
class Jobs:
    url: str
    completed: list[str]
    failed: list[str]
    scheduled: str  # key "later:1", run in an hour
    queued: str  # key "other:1", in a queue no worker serves


async def _populate(url: str) -> Jobs:
    app = Conveyor(url)

    @app.job("ok")
    async def ok(payload: dict[str, int], ctx: JobContext) -> dict[str, int]:
        ctx.log("working", n=payload["n"])
        return {"double": payload["n"] * 2}

    @app.job("bad", retries=0)
    async def bad(payload: dict[str, int]) -> None:
        raise Permanent(f"boom {payload['n']}")

    @app.job("later")
    async def later(payload: dict[str, int]) -> None:
        return None

    async with app:
        done = await app.enqueue_many([("ok", {"n": n}) for n in range(3)])
        failed = await app.enqueue_many([("bad", {"n": n}) for n in range(2)])
        async with app.worker(concurrency=2):
            for job in [*done, *failed]:
                await app.wait(job.id, timeout=15)
        scheduled = await app.enqueue("later", {"n": 0}, delay=3600, key="later:1")
        queued = await app.enqueue("later", {"n": 1}, key="other:1", queue="other")
        await app.recurring("nightly", "ok", {"n": 9}, cron="0 3 * * *", tz="Europe/Paris")
        await app.recurring("often", "ok", {"n": 8}, every="10 minutes")
    return Jobs(url, [j.id for j in done], [j.id for j in failed], scheduled.id, queued.id)


@pytest.fixture
def jobs(db_url: str) -> Jobs:
    return asyncio.run(_populate(db_url))


def _json(*args: str) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _state(jobs: Jobs, job_id: str) -> str:
    data = _json("--url", jobs.url, "jobs", "show", job_id, "--json")
    assert isinstance(data, dict)
    state: str = data["state"]
    return state


def test_stats(jobs: Jobs) -> None:
    counts = _json("--url", jobs.url, "stats", "--json")
    assert counts == {
        "default": {
            **dict.fromkeys((s.value for s in JobState), 0),
            "completed": 3,
            "failed": 2,
            "scheduled": 1,
        },
        "other": {**dict.fromkeys((s.value for s in JobState), 0), "queued": 1},
    }
    table = invoke("--url", jobs.url, "stats")
    assert table.exit_code == 0
    for word in ("queue", "default", "other", "completed", "failed", "total"):
        assert word in table.stdout
    assert table.stdout.count("7") >= 1  # the total of all queues


def test_stats_names_waiting_job_types_no_live_worker_serves(db_url: str) -> None:
    from conveyor.backends.stores import WorkerInfo, WorkerRegistry

    async def setup() -> None:
        app = Conveyor(db_url)
        for name in ("email.new", "report.build"):
            app.job(name)(_noop)
        async with app:
            await app.enqueue_many([("email.new", {"n": n}) for n in range(12)])
            await app.enqueue("report.build", {})
            await app.enqueue("report.build", {}, queue="reports")
            backend = app.backend
            assert isinstance(backend, WorkerRegistry)
            now = time.time()
            serves = ("default",), ("report.build",)
            await backend.worker_beat(WorkerInfo("w-1", "box", 7, *serves, now, now), 600.0, now)

    asyncio.run(setup())
    table = invoke("--url", db_url, "stats")
    assert table.exit_code == 0, table.output
    assert "email.new: 12 waiting, no worker serves it" in table.stdout
    assert "report.build: 1 waiting, no worker serves it" in table.stdout  # queue "reports"
    assert table.stdout.count("no worker serves it") == 2
    assert "1 live worker serving default" in table.stdout


async def _noop(payload: Any) -> None:
    return None


def test_jobs_ls(jobs: Jobs) -> None:
    failed = _json("--url", jobs.url, "jobs", "ls", "--state", "failed", "--json")
    assert isinstance(failed, list)
    assert sorted(j["id"] for j in failed) == sorted(jobs.failed)
    assert {j["error"] for j in failed} == {"Permanent: boom 0", "Permanent: boom 1"}

    table = invoke("--url", jobs.url, "jobs", "ls")
    assert table.exit_code == 0
    every = [*jobs.completed, *jobs.failed, jobs.scheduled, jobs.queued]
    assert all(job_id in table.stdout for job_id in every)
    assert "Permanent: boom" in table.stdout
    # The job delayed by an hour says when it runs, not just that it waits.
    assert "run at" in table.stdout
    delayed = next(line for line in table.stdout.splitlines() if jobs.scheduled in line)
    assert "in 59m" in delayed or "in 1h" in delayed

    by_name = _json("--url", jobs.url, "jobs", "ls", "--name", "ok", "--limit", "2", "--json")
    assert isinstance(by_name, list)
    assert len(by_name) == 2
    assert {j["name"] for j in by_name} == {"ok"}
    by_queue = _json("--url", jobs.url, "jobs", "ls", "--queue", "other", "--json")
    assert [j["id"] for j in by_queue] == [jobs.queued]


def test_jobs_show(jobs: Jobs) -> None:
    job_id = jobs.completed[1]
    data = _json("--url", jobs.url, "jobs", "show", job_id, "--json")
    assert isinstance(data, dict)
    assert data["payload"] == {"n": 1}
    assert data["result"] == {"double": 2}
    assert [line["msg"] for line in data["logs"]] == ["working"]

    shown = invoke("--url", jobs.url, "jobs", "show", job_id)
    assert shown.exit_code == 0
    for text in (job_id, "completed", "payload", "result", '"double": 2', "working", "n=1"):
        assert text in shown.stdout, text

    failed = invoke("--url", jobs.url, "jobs", "show", jobs.failed[0])
    assert "Permanent: boom 0" in failed.stdout


def test_jobs_show_prints_the_traceback_and_the_attempts(jobs: Jobs) -> None:
    job_id = jobs.failed[0]
    data = _json("--url", jobs.url, "jobs", "show", job_id, "--json")
    assert isinstance(data, dict)
    traceback = data["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert ", in bad\n" in traceback  # the handler's frame, down to the raising line
    assert traceback.rstrip().endswith("Permanent: boom 0")
    (attempt,) = data["history"]
    assert attempt["attempt"] == 1 and attempt["outcome"] == "failed"
    assert attempt["error"] == "Permanent: boom 0"
    assert attempt["started_at"] <= attempt["finished_at"]

    shown = invoke("--url", jobs.url, "jobs", "show", job_id)
    assert shown.exit_code == 0
    for text in ("attempts", "traceback of the last failure", "Traceback (most recent call"):
        assert text in shown.stdout, text
    assert shown.stdout.count("Permanent: boom 0") >= 3  # the attempt, the error, the traceback

    # A job that never failed shows neither.
    completed = invoke("--url", jobs.url, "jobs", "show", jobs.completed[0])
    assert "Traceback" not in completed.stdout


def test_cancel_by_id_and_by_key(jobs: Jobs) -> None:
    result = invoke("--url", jobs.url, "cancel", jobs.scheduled)
    assert result.exit_code == 0, result.output
    assert f"cancelled job {jobs.scheduled}" in result.stdout
    assert _state(jobs, jobs.scheduled) == "cancelled"

    again = invoke("--url", jobs.url, "cancel", jobs.scheduled)
    assert again.exit_code == 1
    assert "is already cancelled; nothing to cancel" in error_line(again.stderr)

    wrong_name = invoke("--url", jobs.url, "cancel", "--name", "ok", "--key", "other:1")
    assert wrong_name.exit_code == 1
    assert "no 'ok' job with key 'other:1'" in error_line(wrong_name.stderr)
    assert _state(jobs, jobs.queued) == "queued"

    by_key = invoke("--url", jobs.url, "cancel", "--name", "later", "--key", "other:1")
    assert by_key.exit_code == 0, by_key.output
    assert _state(jobs, jobs.queued) == "cancelled"


def test_retry_one_and_all_failed(jobs: Jobs) -> None:
    result = invoke("--url", jobs.url, "retry", jobs.failed[0])
    assert result.exit_code == 0, result.output
    assert _state(jobs, jobs.failed[0]) == "queued"

    not_failed = invoke("--url", jobs.url, "retry", jobs.completed[0])
    assert not_failed.exit_code == 1
    assert "only failed or cancelled jobs can be retried" in error_line(not_failed.stderr)

    elsewhere = invoke("--url", jobs.url, "retry", "--all-failed", "--queue", "other")
    assert elsewhere.exit_code == 0
    assert "queued 0 failed job(s) again" in elsewhere.stdout

    every = invoke("--url", jobs.url, "retry", "--all-failed")
    assert every.exit_code == 0, every.output
    assert "queued 1 failed job(s) again" in every.stdout
    assert _state(jobs, jobs.failed[1]) == "queued"


def test_purge(jobs: Jobs) -> None:
    too_young = invoke("--url", jobs.url, "purge", "--older-than", "1h", "--yes")
    assert too_young.exit_code == 0, too_young.output
    assert "purged 0 job(s)" in too_young.stdout

    declined = invoke("--url", jobs.url, "purge", input="n\n")
    assert declined.exit_code == 1
    assert "Delete completed jobs from all queues" in declined.stdout  # the question
    assert "nothing was purged" in error_line(declined.stderr)

    confirmed = invoke("--url", jobs.url, "purge", "--state", "failed", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "purged 2 job(s)" in confirmed.stdout

    everything = invoke("--url", jobs.url, "purge", "--older-than", "0s", "--yes")
    assert "purged 3 job(s)" in everything.stdout
    left = _json("--url", jobs.url, "jobs", "ls", "--json")
    assert sorted(j["id"] for j in left) == sorted([jobs.scheduled, jobs.queued])

    running = invoke("--url", jobs.url, "purge", "--state", "running", "--yes")
    assert running.exit_code == 1
    assert "running jobs cannot be purged" in error_line(running.stderr)


def test_recurring(jobs: Jobs) -> None:
    listed = _json("--url", jobs.url, "recurring", "ls", "--json")
    assert [(s["name"], s["job_name"], s["enabled"]) for s in listed] == [
        ("nightly", "ok", True),
        ("often", "ok", True),
    ]
    assert listed[1]["every"] == 600.0
    table = invoke("--url", jobs.url, "recurring", "ls")
    for text in ("nightly", "0 3 * * *", "Europe/Paris", "often", "every 10 minutes"):
        assert text in table.stdout, text

    assert invoke("--url", jobs.url, "recurring", "disable", "nightly").exit_code == 0
    listed = _json("--url", jobs.url, "recurring", "ls", "--json")
    nightly = listed[0]
    assert (nightly["name"], nightly["enabled"], nightly["next_run"]) == ("nightly", False, None)
    assert invoke("--url", jobs.url, "recurring", "enable", "nightly").exit_code == 0

    declined = invoke("--url", jobs.url, "recurring", "delete", "often", input="n\n")
    assert declined.exit_code == 1
    assert "nothing was deleted" in error_line(declined.stderr)
    deleted = invoke("--url", jobs.url, "recurring", "delete", "often", "--yes")
    assert deleted.exit_code == 0, deleted.output
    listed = _json("--url", jobs.url, "recurring", "ls", "--json")
    assert [(s["name"], s["enabled"]) for s in listed] == [("nightly", True)]

    unknown = invoke("--url", jobs.url, "recurring", "enable", "often")
    assert unknown.exit_code == 1
    assert error_line(unknown.stderr) == "error: no recurring schedule named 'often'"
