"""`conveyor demo` runs to the end in a real process, from any directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import Conveyor

from .helpers import run_conveyor

pytestmark = pytest.mark.slow


def test_demo_runs_to_completion(tmp_path: Path, sqlite_urls: Callable[[], str]) -> None:
    # sqlite_urls: skip (or fail under CI) like every SQLite test when the
    # backend is unavailable; the demo's default is a SQLite file.
    (tmp_path / "conveyor-demo.db").write_text("left over from an earlier run")
    started = time.monotonic()
    result = run_conveyor("demo", "--jobs", "60", cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60
    assert "Traceback" not in result.stderr
    assert "summary" in result.stdout
    assert "60 jobs in" in result.stdout  # the summary's caption with the wall time

    # The stale file was replaced by a fresh demo database holding exactly the
    # demo's 60 jobs, all finished.
    app = Conveyor(f"sqlite:///{tmp_path / 'conveyor-demo.db'}")
    try:
        counts = app.stats_sync()
    finally:
        app.close_sync()
    finished = sum(q["completed"] + q["failed"] for q in counts.values())
    assert finished == 60, counts
    assert sum(sum(q.values()) for q in counts.values()) == 60, counts


def test_demo_on_memory(tmp_path: Path) -> None:
    result = run_conveyor("demo", "--jobs", "8", "--url", "memory://", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 jobs in" in result.stdout
    assert not (tmp_path / "conveyor-demo.db").exists()
