"""Real processes (issue 14, points 2 and 4): `conveyor worker APP --discover
PKG` runs handlers found in a package tree; `conveyor jobs types` lists
them; an `@app.every` function runs in a worker, and with two workers once
per tick.

The package is written to tmp_path: `shop/__init__.py` holds the app,
`shop/jobs/` the handlers, in subpackages. Handlers append one short line
per run to a file with O_APPEND (lines of different processes never mix).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
from collections import Counter
from pathlib import Path
from textwrap import dedent

import pytest

from conveyor import Conveyor, JobState

from .helpers import WAIT, WorkerProcess, eventually, run_conveyor, run_until_stopped

pytestmark = [pytest.mark.slow, pytest.mark.sqlite]

FILES = {
    "shop/__init__.py": """
        import os
        from pathlib import Path

        from conveyor import Conveyor

        HERE = Path(__file__).resolve().parent.parent
        app = Conveyor()  # the URL comes from CONVEYOR_URL


        def append(name: str, line: str) -> None:
            fd = os.open(HERE / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\\n").encode())
            finally:
                os.close(fd)
    """,
    "shop/jobs/__init__.py": "",
    "shop/jobs/mail/__init__.py": "",
    "shop/jobs/mail/send.py": """
        from shop import app


        @app.job("mail.send", queue="mail", retries=5, timeout=None)
        async def send(payload: dict) -> str:
            return "sent to " + payload["to"]
    """,
    "shop/jobs/mail/receipt.py": """
        from shop import app


        def from_v1(payload: dict) -> dict:
            return {"to": [payload["to"]]}


        @app.job("mail.receipt", queue="mail", version=2, migrations={1: from_v1})
        async def receipt(payload: dict) -> int:
            return len(payload["to"])
    """,
    "shop/jobs/ticks.py": """
        import os

        from conveyor import JobContext
        from shop import app, append


        @app.every("1 second", name="tick")
        def tick(ctx: JobContext) -> None:
            append("ticks.log", f"{ctx.job.key} {os.getpid()}")
    """,
}


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    for path, text in FILES.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dedent(text))
    return tmp_path


@pytest.fixture
def url(shop: Path) -> str:
    return f"sqlite:///{shop / 'jobs.db'}"


def ticks_logged(shop: Path) -> list[tuple[float, int]]:
    """(tick, pid) of each run of the `tick` function, from its job's key."""
    log = shop / "ticks.log"
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    return [(float(key.rsplit(":", 1)[1]), int(pid)) for key, pid in rows]


def test_jobs_types_lists_the_discovered_types(shop: Path, url: str) -> None:
    listed = run_conveyor(
        "jobs", "types", "shop:app", "--discover", "shop.jobs", "--json", cwd=shop
    )
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"mail.receipt", "mail.send", "tick"}
    assert rows["mail.receipt"]["version"] == 2
    assert rows["mail.send"] | {"handler": True} == {
        "name": "mail.send",
        "queue": "mail",
        "retries": 5,
        "timeout": None,
        "priority": 0,
        "version": 1,
        "handler": True,
        "schedule": None,
    }
    assert rows["tick"]["schedule"] == "every 1 second"
    table = run_conveyor("jobs", "types", "shop:app", "--discover", "shop.jobs", cwd=shop)
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[1].split()
    assert header == ["name", "queue", "retries", "timeout", "version", "handler", "schedule"]
    listed = [line.split() for line in table.stdout.splitlines()]
    assert ["mail.send", "mail", "5", "none", "1", "yes"] in listed, table.stdout
    assert ["mail.receipt", "mail", "3", "30", "s", "2", "yes"] in listed, table.stdout
    # Without --discover, the app module alone registers nothing.
    bare = run_conveyor("jobs", "types", "shop:app", "--json", cwd=shop)
    assert bare.returncode == 0 and json.loads(bare.stdout) == [], bare.stderr


def test_a_broken_module_stops_the_worker_with_one_line_naming_it(shop: Path, url: str) -> None:
    (shop / "shop/jobs/mail/broken.py").write_text("import not_installed_anywhere_x\n")
    for command in (["jobs", "types"], ["worker"]):
        ran = run_conveyor(
            *command,
            "shop:app",
            "--discover",
            "shop.jobs",
            cwd=shop,
            env=dict(os.environ, CONVEYOR_URL=url),
        )
        assert ran.returncode != 0
        lines = [line for line in ran.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in ran.stderr, ran.stderr
        assert "cannot import shop.jobs.mail.broken" in lines[0], lines[0]
        assert "not_installed_anywhere_x" in lines[0], lines[0]


def test_a_worker_with_discover_runs_a_job_and_an_every_function(shop: Path, url: str) -> None:
    producer = Conveyor(url)
    producer.declare("mail.send", queue="mail", retries=5, timeout=None)
    worker = WorkerProcess(
        shop, url, ["shop:app", "--discover", "shop.jobs", "--poll-interval", "0.1"], "worker"
    )
    try:
        job = producer.enqueue_sync("mail.send", {"to": "a@b.c"})
        done = producer.wait_sync(job.id, timeout=WAIT)
        assert done.state is JobState.COMPLETED and done.result == "sent to a@b.c"
        eventually(lambda: len(ticks_logged(shop)) >= 2, "two runs of the every-second function")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
    finally:
        worker.close()
        schedules = producer.list_recurring_sync()
        producer.close_sync()
    output = worker.log_path.read_text()
    assert "discovered 5 module(s)" in output, output
    assert [s.name for s in schedules] == ["tick"] and schedules[0].job_name == "tick"


def test_two_workers_run_an_every_function_once_per_tick(shop: Path, url: str) -> None:
    args = ["shop:app", "--discover", "shop.jobs", "--poll-interval", "0.1"]
    workers = [WorkerProcess(shop, url, args, f"worker{n}") for n in range(2)]
    stopped, outputs = run_until_stopped(workers, lambda: ticks_logged(shop), "the first tick", 4.5)
    assert "Traceback" not in outputs, outputs
    runs = ticks_logged(shop)
    per_tick = Counter(tick for tick, _ in runs)
    assert max(per_tick.values()) == 1, sorted(per_tick.items())  # once per tick
    ticks = sorted(per_tick)
    # On the schedule's one-second grid, about one a second until the stop
    # (the last may still have been running when the workers were told to stop).
    assert all(abs((b - a) - round(b - a)) < 0.002 for a, b in itertools.pairwise(ticks))
    expected = math.floor(stopped - ticks[0]) + 1
    assert expected - 2 <= len(ticks) <= expected, (ticks, stopped)
    app = Conveyor(url)
    try:
        jobs = app.list_jobs_sync(name="tick", limit=1000)
    finally:
        app.close_sync()
    assert Counter(job.key for job in jobs).most_common(1)[0][1] == 1
