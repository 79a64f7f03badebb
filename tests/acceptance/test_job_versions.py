"""Two real worker processes with different versions of one job type (issue
14, point 3): the version-1 worker leaves a version-2 job queued (no attempt
counted) while it runs the version-1 jobs; the version-2 worker runs the
version-2 job and a version-1 job through the migration."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState

from . import test_worker_processes
from .helpers import WorkerProcess, eventually

pytestmark = pytest.mark.slow

db_url = test_worker_processes.db_url  # the same fixture: on SQLite and on PostgreSQL

APP = """
import json
import os
from pathlib import Path

from pydantic import BaseModel

from conveyor import Conveyor, JobContext

app = Conveyor()  # the URL comes from CONVEYOR_URL
RAN = Path(__file__).resolve().parent / "ran.log"


def record(worker: str, ctx: JobContext, payload: BaseModel) -> None:
    line = {{"worker": worker, "id": ctx.job_id, "version": ctx.job.version,
             "payload": payload.model_dump(), "pid": os.getpid()}}
    with open(RAN, "a") as out:
        out.write(json.dumps(line) + "\\n")

{types}
"""

V1 = """
class Greet(BaseModel):
    first: str
    last: str


@app.job("greet")
def greet(payload: Greet, ctx: JobContext) -> None:
    record("v1", ctx, payload)
"""

V2 = """
class Greet(BaseModel):
    full_name: str


def from_v1(payload: dict) -> dict:
    return {"full_name": payload["first"] + " " + payload["last"]}


@app.job("greet", version=2, migrations={1: from_v1})
def greet(payload: Greet, ctx: JobContext) -> None:
    record("v2", ctx, payload)
"""


@pytest.fixture
def workers(tmp_path: Path, db_url: str) -> Iterator[Callable[[str], WorkerProcess]]:
    (tmp_path / "greet_v1.py").write_text(APP.format(types=V1))
    (tmp_path / "greet_v2.py").write_text(APP.format(types=V2))
    started: list[WorkerProcess] = []

    def start(module: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, db_url, [f"{module}:app", "--concurrency", "2"], module)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def ran(tmp_path: Path) -> dict[str, dict[str, object]]:
    log = tmp_path / "ran.log"
    if not log.exists():
        return {}
    return {row["id"]: row for row in map(json.loads, log.read_text().splitlines())}


def test_workers_of_two_versions_share_the_queue(
    tmp_path: Path, db_url: str, workers: Callable[[str], WorkerProcess]
) -> None:
    old = Conveyor(db_url)
    old.declare("greet")  # version 1: a producer not yet upgraded
    new = Conveyor(db_url)
    new.declare("greet", version=2)
    try:
        newer = new.enqueue_sync("greet", {"full_name": "Alan Turing"})
        v1_worker = workers("greet_v1")
        first = old.enqueue_sync("greet", {"first": "Ada", "last": "Lovelace"})
        eventually(lambda: first.id in ran(tmp_path), "the v1 worker to run the v1 job")
        eventually(
            lambda: f"job greet {newer.id} is version 2" in v1_worker.output(),
            "the v1 worker to leave the v2 job",
        )
        assert newer.id not in ran(tmp_path)

        v2_worker = workers("greet_v2")  # both run now
        done = new.wait_sync(newer.id, timeout=20)
        assert (done.state, done.attempts, done.version) == (JobState.COMPLETED, 1, 2)

        v1_worker.signal(signal.SIGTERM)
        assert v1_worker.wait() == 0
        second = old.enqueue_sync("greet", {"first": "Grace", "last": "Hopper"})
        assert new.wait_sync(second.id, timeout=20).state is JobState.COMPLETED
        v2_worker.signal(signal.SIGTERM)
        assert v2_worker.wait() == 0
    finally:
        old.close_sync()
        new.close_sync()

    rows = ran(tmp_path)
    assert {k: (r["worker"], r["version"], r["payload"]) for k, r in rows.items()} == {
        first.id: ("v1", 1, {"first": "Ada", "last": "Lovelace"}),
        newer.id: ("v2", 2, {"full_name": "Alan Turing"}),
        second.id: ("v2", 1, {"full_name": "Grace Hopper"}),
    }
    assert rows[newer.id]["pid"] == v2_worker.pid != v1_worker.pid
