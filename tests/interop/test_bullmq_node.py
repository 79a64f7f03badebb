"""conveyor and Node BullMQ on the same queue (bullmq:// backend): jobs a
Node producer adds run on a conveyor worker, with results Node reads; jobs
conveyor enqueues run on a Node worker, with results conveyor reads."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, JobContext, JobState

pytestmark = [pytest.mark.bullmq, pytest.mark.slow]

NodeBull = Callable[..., dict[str, Any]]  # runs bull.mjs (conftest.py: node_bull)


async def test_node_producers_jobs_run_on_a_conveyor_worker(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    added = node_bull(
        spec,
        command="add",
        jobs=[
            {"name": "add", "data": {"a": 1, "b": 2}},
            {"name": "add", "data": {"a": 3, "b": 4}, "opts": {"delay": 300}},
            {"name": "add", "data": {"a": 5, "b": 6}, "opts": {"priority": 2}},
            {"name": "add", "data": {"a": 7, "b": 8}, "opts": {"jobId": "order-42"}},
            {"name": "add", "data": {"a": 0, "b": 0}, "opts": {"attempts": 3}},
        ],
    )
    ids = added["ids"]
    assert ids[3] == "order-42"
    app = Conveyor(url)

    @app.job("add")
    async def add(payload: dict[str, int], ctx: JobContext) -> dict[str, Any]:
        ctx.log("adding", a=payload["a"])
        await ctx.progress(100)
        return {"sum": payload["a"] + payload["b"], "by": "conveyor"}

    await app.open()
    try:
        keyed = await app.get_job("order-42")
        assert keyed is not None and keyed.key == "order-42"
        assert keyed.payload == {"a": 7, "b": 8}
        assert (await app.get_job(ids[4])).max_retries == 2  # type: ignore[union-attr]
        async with app.worker(concurrency=2, poll_interval=0.05):
            done = [await app.wait(i, timeout=20) for i in ids]
    finally:
        await app.close()
    assert [job.state for job in done] == [JobState.COMPLETED] * 5
    seen = node_bull(spec, command="get", ids=ids)["jobs"]
    assert [job["returnvalue"] for job in seen] == [
        {"sum": s, "by": "conveyor"} for s in (3, 7, 11, 15, 0)
    ]
    assert {job["state"] for job in seen} == {"completed"}
    assert [job["attemptsMade"] for job in seen] == [1] * 5
    assert all(job["progress"] == 100 for job in seen)
    assert all('"msg":"adding"' in job["logs"][0] for job in seen)


async def test_conveyor_jobs_run_on_a_node_worker(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    app = Conveyor(url)
    app.declare("add")  # the handler is Node's
    await app.open()
    try:
        jobs = [
            await app.enqueue("add", {"a": 1, "b": 1}),
            await app.enqueue("add", {"a": 2, "b": 2}, key="invoice-7"),
            await app.enqueue("add", {"a": 3, "b": 3}, delay=0.3),
            await app.enqueue("add", {"a": 4, "b": 4}, priority=3),
        ]
        worked = await asyncio.to_thread(node_bull, spec, command="work", count=4, timeout_ms=20000)
        assert sorted(job["id"] for job in worked["done"]) == sorted(job.id for job in jobs)
        assert jobs[1].id == "invoice-7"
        done = [await app.wait(job.id, timeout=5) for job in jobs]
    finally:
        await app.close()
    assert [job.state for job in done] == [JobState.COMPLETED] * 4
    assert [job.result for job in done] == [{"sum": s, "by": "node"} for s in (2, 4, 6, 8)]
    assert [job.attempts for job in done] == [1] * 4
    assert all(job.progress == 100 for job in done)


async def test_node_jobs_retries_and_failures_on_a_conveyor_worker(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    backoff = {"type": "exponential", "delay": 200}
    ids = node_bull(
        spec,
        command="add",
        jobs=[
            {"name": "flaky", "data": {}, "opts": {"attempts": 3, "backoff": backoff}},
            {"name": "doomed", "data": {}, "opts": {"attempts": 1}},
        ],
    )["ids"]
    app = Conveyor(url)
    tries: dict[int, float] = {}

    @app.job("flaky")
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        tries[ctx.attempt] = asyncio.get_running_loop().time()
        if ctx.attempt < 3:
            raise RuntimeError(f"not yet ({ctx.attempt})")
        return "third time"

    @app.job("doomed")
    async def doomed(payload: dict[str, Any]) -> None:
        raise ValueError("cannot ever work")

    async with app, app.worker(concurrency=2, poll_interval=0.05):
        flaky_done = await app.wait(ids[0], timeout=20)
        doomed_done = await app.wait(ids[1], timeout=20)
    assert (flaky_done.state, flaky_done.result, flaky_done.attempts) == (
        JobState.COMPLETED,
        "third time",
        3,
    )
    # BullMQ's exponential backoff of the job's own options: 200 ms, then 400 ms.
    assert 0.2 <= tries[2] - tries[1] < 1.0
    assert 0.4 <= tries[3] - tries[2] < 1.5
    assert doomed_done.state is JobState.FAILED
    seen = node_bull(spec, command="get", ids=ids)["jobs"]
    assert (seen[0]["state"], seen[0]["returnvalue"], seen[0]["attemptsMade"]) == (
        "completed",
        "third time",
        3,
    )
    assert seen[1]["state"] == "failed"
    assert seen[1]["failedReason"] == "ValueError: cannot ever work"
    assert seen[1]["attemptsMade"] == 1
    assert "ValueError: cannot ever work" in seen[1]["stacktrace"][-1]


async def test_a_node_jobs_own_remove_on_complete_and_fail_hold_on_a_conveyor_worker(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    """removeOnComplete / removeOnFail set by the Node producer win over the
    conveyor worker's retention, as they do over a Node worker's."""
    url, spec = bull_queue
    ids = node_bull(
        spec,
        command="add",
        jobs=[
            {"name": "doomed", "data": {}, "opts": {"attempts": 1, "removeOnFail": True}},
            {"name": "add", "data": {"a": 1, "b": 1}, "opts": {"removeOnComplete": True}},
            {"name": "add", "data": {"a": 2, "b": 2}},
        ],
    )["ids"]
    app = Conveyor(url)

    @app.job("add")
    async def add(payload: dict[str, int]) -> int:
        return payload["a"] + payload["b"]

    @app.job("doomed")
    async def doomed(payload: dict[str, Any]) -> None:
        raise ValueError("cannot ever work")

    async with app, app.worker(concurrency=1, poll_interval=0.05):
        last = await app.wait(ids[2], timeout=20)  # one at a time: the others ran first
    assert (last.state, last.result) == (JobState.COMPLETED, 4)
    seen = node_bull(spec, command="get", ids=ids)["jobs"]
    assert seen[:2] == [None, None]
    assert (seen[2]["state"], seen[2]["returnvalue"]) == ("completed", 4)


async def test_a_mixed_pool_runs_every_job_once(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    url, spec = bull_queue
    stop_key = f"{spec['prefix']}:stop-node-worker"
    ready_key = f"{spec['prefix']}:node-worker-ready"
    app = Conveyor(url)
    ran_here: list[str] = []

    @app.job("add")
    async def add(payload: dict[str, int], ctx: JobContext) -> dict[str, Any]:
        await asyncio.sleep(payload["sleep_ms"] / 1000)
        ran_here.append(ctx.job_id)
        return {"sum": payload["a"] + payload["b"], "by": "conveyor"}

    async with app:
        node = asyncio.create_task(
            asyncio.to_thread(
                node_bull,
                spec,
                command="work",
                count=1000,
                timeout_ms=30000,
                stop_key=stop_key,
                ready_key=ready_key,
            )
        )
        # Node's start takes a moment (seconds on a busy machine): wait for it.
        for _ in range(600):
            if await app.backend._cmd("EXISTS", ready_key):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the Node worker did not start within 30 s")
        async with app.worker(concurrency=2, poll_interval=0.05):
            jobs = await app.enqueue_many(
                [("add", {"a": i, "b": i, "sleep_ms": 100}) for i in range(30)]
            )
            done = [await app.wait(job.id, timeout=30) for job in jobs]
        await app.backend._cmd("SET", stop_key, "1")  # type: ignore[attr-defined]
        ran_by_node = [job["id"] for job in (await node)["done"]]
    assert [job.state for job in done] == [JobState.COMPLETED] * 30
    assert sorted(ran_here + ran_by_node) == sorted(job.id for job in jobs)  # each once
    assert ran_here and ran_by_node  # both took a share
    by = {job.id: job.result["by"] for job in done}
    assert {by[i] for i in ran_here} == {"conveyor"} and {by[i] for i in ran_by_node} == {"node"}


# A conveyor worker process that takes one job and hangs in it (until killed).
HANGING_WORKER = """
import asyncio, pathlib, sys
from conveyor import Conveyor
app = Conveyor(sys.argv[1])
@app.job("add")
async def add(payload: dict) -> None:
    pathlib.Path(sys.argv[2]).write_text("started")
    await asyncio.sleep(600)
asyncio.run(app.worker(concurrency=1, lease=1.0, heartbeat_interval=0.2).run())
"""


async def test_a_killed_conveyor_workers_job_is_recovered_by_node(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull, tmp_path: Path
) -> None:
    url, spec = bull_queue
    app = Conveyor(url)
    app.declare("add")
    started = tmp_path / "started"
    async with app:
        job = await app.enqueue("add", {"a": 20, "b": 22})
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HANGING_WORKER, url, str(started)
        )
        try:
            for _ in range(200):
                if started.exists():
                    break
                await asyncio.sleep(0.05)
            assert started.exists(), "the conveyor worker never started the job"
        finally:
            worker.kill()  # SIGKILL: no hand-back, the lock just expires
            await worker.wait()
        assert (await app.get_job(job.id)).state is JobState.RUNNING  # type: ignore[union-attr]
        # BullMQ's stalled check on the Node side finds the expired lock.
        fast_checks = {"stalledInterval": 300, "maxStalledCount": 1}
        worked = await asyncio.to_thread(
            node_bull, spec, command="work", count=1, timeout_ms=15000, worker_opts=fast_checks
        )
        assert [done["id"] for done in worked["done"]] == [job.id]
        done = await app.get_job(job.id)
    assert done is not None and done.state is JobState.COMPLETED
    assert done.result == {"sum": 42, "by": "node"}
    assert done.stalls == 1


async def test_a_killed_node_workers_job_is_recovered_by_conveyor(
    bull_queue: tuple[str, dict[str, Any]], node_bullmq: Path
) -> None:
    url, spec = bull_queue
    app = Conveyor(url)

    @app.job("hang")
    async def hang(payload: dict[str, Any]) -> str:
        return "finished by conveyor"

    async with app:
        job = await app.enqueue("hang", {})
        node_spec = {
            **spec,
            "command": "work",
            "count": 1,
            "timeout_ms": 60000,
            "worker_opts": {"lockDuration": 1000},
        }
        node = await asyncio.create_subprocess_exec(
            "node", str(node_bullmq / "bull.mjs"), json.dumps(node_spec)
        )
        try:
            for _ in range(300):
                seen = await app.get_job(job.id)
                if seen is not None and seen.progress == 1:
                    break
                await asyncio.sleep(0.05)
            assert seen is not None and seen.state is JobState.RUNNING and seen.progress == 1
        finally:
            node.kill()  # SIGKILL: the Node worker's lock just expires
            await node.wait()
        async with app.worker(concurrency=1, poll_interval=0.05, recover_interval=0.2):
            done = await app.wait(job.id, timeout=20)
    assert (done.state, done.result, done.stalls) == (
        JobState.COMPLETED,
        "finished by conveyor",
        1,
    )


async def test_a_queues_global_concurrency_holds_for_a_conveyor_worker(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    """Node's queue.setGlobalConcurrency(1) (in the queue's meta hash) is read
    by BullMQ's claim script: a conveyor worker of concurrency 4 runs the
    queue's jobs one at a time, and all of them."""
    url, spec = bull_queue
    ids = node_bull(
        spec,
        command="add",
        global_concurrency=1,
        jobs=[{"name": "slow", "data": {"n": n}} for n in range(6)],
    )["ids"]
    app = Conveyor(url)
    running: list[int] = []
    most = 0

    @app.job("slow")
    async def slow(payload: dict[str, int]) -> int:
        nonlocal most
        running.append(payload["n"])
        most = max(most, len(running))
        await asyncio.sleep(0.1)
        running.remove(payload["n"])
        return payload["n"]

    await app.open()
    try:
        async with app.worker(concurrency=4, poll_interval=0.05):
            done = [await app.wait(i, timeout=20) for i in ids]
    finally:
        await app.close()
    assert [job.state for job in done] == [JobState.COMPLETED] * 6
    assert most == 1


async def test_a_queues_global_rate_limit_holds_for_a_conveyor_worker(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    """Node's queue.setGlobalRateLimit(2, 500): BullMQ's claim script lets 2
    jobs start per 500 ms window, whoever claims; a conveyor worker waits the
    window out and runs them all."""
    url, spec = bull_queue
    ids = node_bull(
        spec,
        command="add",
        global_rate_limit=[2, 500],
        jobs=[{"name": "quick", "data": {"n": n}} for n in range(6)],
    )["ids"]
    app = Conveyor(url)
    started: list[float] = []

    @app.job("quick")
    async def quick(payload: dict[str, int]) -> None:
        started.append(asyncio.get_running_loop().time())

    await app.open()
    try:
        async with app.worker(concurrency=4, poll_interval=0.05):
            done = [await app.wait(i, timeout=20) for i in ids]
    finally:
        await app.close()
    assert [job.state for job in done] == [JobState.COMPLETED] * 6
    # Windows of 500 ms: the 5th job starts in the third, 1 s after the first.
    assert started[4] - started[0] >= 0.95


async def test_a_pause_is_bullmqs_own_on_both_sides(
    bull_queue: tuple[str, dict[str, Any]], node_bull: NodeBull
) -> None:
    """app.pause() is BullMQ's pause (the queue's meta hash): Node's
    isPaused() says so (its workers honour it); a pause made by Node
    (queue.pause(), Bull Board's button) is one app.paused() lists and
    app.resume() lifts, and a conveyor worker does not claim meanwhile."""
    url, spec = bull_queue
    app = Conveyor(url)

    @app.job("add")
    async def add(payload: dict[str, int]) -> int:
        return payload["a"] + payload["b"]

    async with app:
        assert await app.pause("default") is True
        assert await app.pause("default") is False  # already paused
        assert node_bull(spec, command="pause") == {"paused": True}
        assert await app.resume("default") is True
        assert node_bull(spec, command="pause") == {"paused": False}

        assert node_bull(spec, command="pause", set=True) == {"paused": True}
        assert await app.paused() == ["default"]
        job = await app.enqueue("add", {"a": 1, "b": 2})
        async with app.worker(poll_interval=0.05, pause_check_interval=0.05):
            await asyncio.sleep(0.5)
            assert (await app.get_job(job.id)).state is JobState.QUEUED  # type: ignore[union-attr]
            assert await app.resume("default") is True
            done = await app.wait(job.id, timeout=20)
        assert node_bull(spec, command="pause") == {"paused": False}
    assert (done.state, done.result) == (JobState.COMPLETED, 3)
