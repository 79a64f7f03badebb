"""`conveyor worker --log-format json` (or CONVEYOR_LOG_FORMAT=json): every
line a real worker process writes is one JSON object, and the lifecycle lines
of a job (started, completed, retrying, failed, its ctx.log lines) carry its
id, name, queue, attempt and the handler's duration."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, JobState

from .helpers import WAIT, WorkerProcess, eventually, invoke

pytestmark = pytest.mark.slow

APP = """
from conveyor import Conveyor, JobContext, Permanent

app = Conveyor()  # CONVEYOR_URL


@app.job("greet")
async def greet(payload: str, ctx: JobContext) -> str:
    ctx.log("greeting", who=payload)
    return f"hello {payload}"


@app.job("flaky", retries=1, backoff=0.05)
async def flaky(payload: int, ctx: JobContext) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


@app.job("bad", retries=0)
async def bad(payload: int) -> None:
    raise Permanent("never")
"""


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_every_line_is_json_with_the_job_fields(tmp_path: Path, db_url: str, how: str) -> None:
    (tmp_path / "logapp.py").write_text(APP)
    args, env = ["logapp:app"], {}
    if how == "flag":
        args += ["--log-format", "json"]
    else:
        env["CONVEYOR_LOG_FORMAT"] = "json"
    worker = WorkerProcess(tmp_path, db_url, args, "worker", env)
    log = worker.log_path
    producer = Conveyor(db_url)
    producer.declare("greet")
    producer.declare("flaky", retries=1)
    producer.declare("bad", retries=0)
    try:
        eventually(lambda: " started: " in log.read_text(), "the worker's start-up line")
        greet = producer.enqueue_sync("greet", "Ada")
        flaky = producer.enqueue_sync("flaky", 1)
        bad = producer.enqueue_sync("bad", 1, queue="default")
        assert producer.wait_sync(greet.id, timeout=WAIT).state is JobState.COMPLETED
        assert producer.wait_sync(flaky.id, timeout=WAIT).state is JobState.COMPLETED
        assert producer.wait_sync(bad.id, timeout=WAIT).state is JobState.FAILED
    finally:
        producer.close_sync()
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
        worker.close()

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all(isinstance(line, dict) for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)

    def of(job_id: str, event: str) -> list[dict[str, Any]]:
        return [x for x in lines if x.get("job_id") == job_id and x.get("event") == event]

    (done,) = of(greet.id, "completed")
    assert (done["job_name"], done["queue"], done["attempt"]) == ("greet", "default", 1)
    assert 0 <= done["duration"] < 5 and done["level"] == "info"
    assert done["message"].startswith(f"job greet {greet.id} completed in ")
    (started,) = of(greet.id, "started")
    assert started["attempt"] == 1 and "duration" not in started
    (said,) = of(greet.id, "log")
    assert said["fields"] == {"who": "Ada"} and "greeting" in said["message"]
    (retrying,) = of(flaky.id, "retrying")
    assert retrying["attempt"] == 1 and retrying["level"] == "warning"
    assert retrying["error"] == "RuntimeError: first attempt fails" and retrying["duration"] >= 0
    assert [x["attempt"] for x in of(flaky.id, "started")] == [1, 2]
    assert of(flaky.id, "completed")[0]["attempt"] == 2
    (failed,) = of(bad.id, "failed")
    assert (failed["level"], failed["error"]) == ("error", "Permanent: never")
    assert failed["duration"] >= 0


def test_an_unknown_log_format_is_refused(db_url: str) -> None:
    result = invoke("--url", db_url, "worker", "x:app", "--log-format", "xml")
    assert result.exit_code == 2 and "'xml' is not one of 'text', 'json'" in result.output
