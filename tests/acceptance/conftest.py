"""Fixtures for the acceptance tests: a SQLite file, a producer, worker processes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

from .helpers import APP_SOURCE, JOB_NAMES, WorkerProcess


@pytest.fixture
def db_url(sqlite_urls: Callable[[], str]) -> str:
    """A fresh SQLite file in tmp_path (skips, or fails under CI, without sqlite)."""
    return sqlite_urls()


@pytest.fixture
def producer(db_url: str) -> Iterator[Conveyor]:
    """An app in the test process that enqueues the test app's job types.

    The handlers run in the worker processes; here only the names and the
    defaults stored on each job matter (no timeout, as in the test app)."""
    app = Conveyor(db_url)
    for name in JOB_NAMES:
        app.job(name, timeout=None)(lambda payload: None)
    yield app
    app.close_sync()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobsapp.py").write_text(APP_SOURCE)
    return tmp_path


@pytest.fixture
def start_worker(app_dir: Path, db_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `conveyor worker jobsapp:app ARGS` in app_dir; all are reaped at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(app_dir, db_url, ["jobsapp:app", *args], f"worker{len(started)}")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, with what the worker command changes undone afterwards:
    it imports from the current directory (sys.path) and sets CONVEYOR_URL.
    Module names are unique per test, so sys.modules needs no cleaning."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("CONVEYOR_URL", "unset")
    monkeypatch.delenv("CONVEYOR_URL")  # recorded as absent, so restored as absent
    return tmp_path
