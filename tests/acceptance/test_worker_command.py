"""The worker command in-process: how it finds the app and builds its settings.

`_serve` (the part that runs the worker) is replaced, so nothing runs here;
real worker processes are in test_worker_processes.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import conveyor.cli.worker_command
from conveyor import Conveyor

from .helpers import error_line, invoke

pytestmark = pytest.mark.slow


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Conveyor, Any]]:
    """What the worker command would have run: (app, worker) per invocation."""
    seen: list[tuple[Conveyor, Any]] = []

    async def fake_serve(app: Conveyor, worker: Any, *metrics: Any) -> None:
        seen.append((app, worker))

    monkeypatch.setattr(conveyor.cli.worker_command, "_serve", fake_serve)
    monkeypatch.setattr(
        conveyor.cli.worker_command, "_configure_logging", lambda level, fmt=None: None
    )
    return seen


def test_worker_flags_win_over_environment(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, db_url: str, served: list[tuple[Conveyor, Any]]
) -> None:
    (in_tmp / "flags_mod.py").write_text(
        "from conveyor import Conveyor\n"
        "app = Conveyor()\n"
        "@app.job('a', queue='alpha')\n"
        "def a(payload): ...\n"
    )
    monkeypatch.setenv("CONVEYOR_CONCURRENCY", "3")
    monkeypatch.setenv("CONVEYOR_QUEUES", "envq")
    monkeypatch.setenv("CONVEYOR_SHUTDOWN_TIMEOUT", "7")

    result = invoke("--url", db_url, "worker", "flags_mod", "--concurrency", "5", "--lease", "2")
    assert result.exit_code == 0, result.output
    app, worker = served[-1]
    settings = worker.settings
    assert app.url == db_url
    assert settings.concurrency == 5  # flag over env
    assert settings.queues == ("envq",)  # env over default
    assert settings.shutdown_timeout == 7.0
    assert settings.lease == 2.0
    assert settings.scheduler is True  # default

    result = invoke("worker", "flags_mod:app", "--queues", "a, b", "--no-scheduler")
    assert result.exit_code == 0, result.output
    settings = served[-1][1].settings
    assert settings.queues == ("a", "b")
    assert settings.scheduler is False
    assert settings.concurrency == 3


# Every worker setting: its flag, a value for it, and its environment variable.
EVERY_SETTING = [
    ("prefetch", "--prefetch", "4", "CONVEYOR_PREFETCH", 4),
    ("lease", "--lease", "12", "CONVEYOR_LEASE", 12.0),
    ("heartbeat_interval", "--heartbeat-interval", "0.5", "CONVEYOR_HEARTBEAT_INTERVAL", 0.5),
    ("recover_interval", "--recover-interval", "2", "CONVEYOR_RECOVER_INTERVAL", 2.0),
    ("max_stalled", "--max-stalled", "3", "CONVEYOR_MAX_STALLED", 3),
    ("max_abandoned_threads", "--max-abandoned-threads", "2", "CONVEYOR_MAX_ABANDONED_THREADS", 2),
    ("shutdown_timeout", "--shutdown-timeout", "9", "CONVEYOR_SHUTDOWN_TIMEOUT", 9.0),
    ("concurrency", "--concurrency", "6", "CONVEYOR_CONCURRENCY", 6),
]


@pytest.mark.parametrize(
    ("field", "flag", "value", "variable", "expected"),
    EVERY_SETTING,
    ids=[s[0] for s in EVERY_SETTING],
)
def test_every_worker_setting_has_a_flag_and_an_environment_variable(
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
    served: list[tuple[Conveyor, Any]],
    field: str,
    flag: str,
    value: str,
    variable: str,
    expected: object,
) -> None:
    (in_tmp / "every_mod.py").write_text(
        "from conveyor import Conveyor\napp = Conveyor()\n@app.job('a')\ndef a(payload): ...\n"
    )
    result = invoke("--url", db_url, "worker", "every_mod", flag, value)
    assert result.exit_code == 0, result.output
    assert getattr(served[-1][1].settings, field) == expected
    monkeypatch.setenv(variable, value)
    result = invoke("--url", db_url, "worker", "every_mod")
    assert result.exit_code == 0, result.output
    assert getattr(served[-1][1].settings, field) == expected
    monkeypatch.setenv(variable, "not-a-number")
    result = invoke("--url", db_url, "worker", "every_mod")
    assert result.exit_code != 0 and variable in error_line(result.stderr)


def test_url_flag_wins_over_the_url_in_the_code(
    in_tmp: Path, db_url: str, served: list[tuple[Conveyor, Any]]
) -> None:
    (in_tmp / "fixed_url_mod.py").write_text(
        "from conveyor import Conveyor\napp = Conveyor('memory://')\n"
    )
    result = invoke("--url", db_url, "worker", "fixed_url_mod:app")
    assert result.exit_code == 0, result.output
    app, _ = served[-1]
    assert app.url == db_url
    assert type(app.backend).__name__ == "SQLiteBackend"


def test_module_alone_finds_its_only_app(in_tmp: Path, served: list[tuple[Conveyor, Any]]) -> None:
    (in_tmp / "one_app_mod.py").write_text(
        "from conveyor import Conveyor\njobs = Conveyor('memory://')\n"
    )
    result = invoke("worker", "one_app_mod")
    assert result.exit_code == 0, result.output
    import one_app_mod  # type: ignore[import-not-found]

    assert served[-1][0] is one_app_mod.jobs


def test_module_alone_with_several_apps(in_tmp: Path, served: list[tuple[Conveyor, Any]]) -> None:
    (in_tmp / "two_apps_mod.py").write_text(
        "from conveyor import Conveyor\nfirst = Conveyor('memory://')\n"
        "second = Conveyor('memory://')\n"
    )
    result = invoke("worker", "two_apps_mod")
    assert result.exit_code == 1
    assert "several Conveyor apps (first, second)" in error_line(result.stderr)
    assert served == []


def test_dotted_attribute(in_tmp: Path, served: list[tuple[Conveyor, Any]]) -> None:
    (in_tmp / "dotted_mod.py").write_text(
        "from types import SimpleNamespace\nfrom conveyor import Conveyor\n"
        "holder = SimpleNamespace(app=Conveyor('memory://'))\n"
    )
    result = invoke("worker", "dotted_mod:holder.app")
    assert result.exit_code == 0, result.output
    assert served[-1][0].url == "memory://"
