"""The CONVEYOR_* environment variables: declared in one place, read by typed
readers whose errors name the variable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import settings
from conveyor.job import InvalidOptionError
from conveyor.settings import env_bool, env_float, env_int, env_queues, env_str
from conveyor.worker import WorkerSettings

VAR = "CONVEYOR_TEST_SETTING"  # not a real variable: nothing else reads it


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Any:
    def put(value: str) -> None:
        monkeypatch.setenv(VAR, value)

    monkeypatch.delenv(VAR, raising=False)
    return put


def test_unset_and_empty_are_none(setenv: Any) -> None:
    readers = (env_str, env_int, env_float, env_bool, env_queues)
    assert [read(VAR) for read in readers] == [None] * len(readers)
    setenv("")
    assert [read(VAR) for read in readers] == [None] * len(readers)


@pytest.mark.parametrize(
    ("reader", "raw", "value"),
    [
        (env_str, "redis://x", "redis://x"),
        (env_int, " 7 ", 7),
        (env_float, "2.5", 2.5),
        (env_float, "12", 12.0),
        (env_bool, "Yes", True),
        (env_bool, "off", False),
        (env_bool, "1", True),
        (env_queues, "a, b,,c ", ("a", "b", "c")),
    ],
)
def test_values(setenv: Any, reader: Any, raw: str, value: Any) -> None:
    setenv(raw)
    assert reader(VAR) == value


@pytest.mark.parametrize(
    ("reader", "raw", "expected"),
    [
        (env_int, "many", "an integer"),
        (env_int, "2.5", "an integer"),
        (env_float, "soon", "a number of seconds"),
        (env_float, "nan", "a number of seconds"),
        (env_bool, "maybe", "true or false"),
        (env_queues, " , ", "queue names"),
    ],
)
def test_bad_values_name_the_variable(setenv: Any, reader: Any, raw: str, expected: str) -> None:
    setenv(raw)
    with pytest.raises(InvalidOptionError, match=rf"^bad {VAR}={raw!r}: expected {expected}"):
        reader(VAR)


def test_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CONVEYOR_CONCURRENCY, "7")
    monkeypatch.setenv(settings.CONVEYOR_PREFETCH, "2")
    monkeypatch.setenv(settings.CONVEYOR_QUEUES, "a, b")
    monkeypatch.setenv(settings.CONVEYOR_SHUTDOWN_TIMEOUT, "12")
    monkeypatch.setenv(settings.CONVEYOR_SCHEDULER, "no")
    found = settings.worker_environment()
    assert found == {
        "concurrency": 7,
        "prefetch": 2,
        "queues": ("a", "b"),
        "shutdown_timeout": 12.0,
        "scheduler": False,
    }
    assert WorkerSettings(**found).concurrency == 7  # field names WorkerSettings takes
    # Code and flags win: a variable they override is not even read.
    monkeypatch.setenv(settings.CONVEYOR_CONCURRENCY, "many")
    assert "concurrency" not in settings.worker_environment(given={"concurrency"})
    with pytest.raises(InvalidOptionError, match="CONVEYOR_CONCURRENCY"):
        settings.worker_environment()


def test_every_variable_the_package_reads_is_declared_here() -> None:
    declared = {value for name, value in vars(settings).items() if name.startswith("CONVEYOR_")}
    package = Path(conveyor.__file__).parent
    # conveyor.contrib.django reads CONVEYOR_APP and CONVEYOR_SCHEMA from
    # Django's settings module, not from the environment.
    django = package / "contrib" / "django"
    used = {
        name
        for path in package.rglob("*.py")
        if django not in path.parents
        for name in re.findall(r"\bCONVEYOR_[A-Z_]+\b", path.read_text())
    }
    assert used - declared == set()


def test_the_readme_lists_every_variable_in_one_table() -> None:
    declared = {value for name, value in vars(settings).items() if name.startswith("CONVEYOR_")}
    readme = (Path(conveyor.__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Environment variables", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(CONVEYOR_[A-Z_]+)` \|", section, re.MULTILINE)
    assert sorted(rows) == sorted(declared)


def test_every_test_suite_variable_is_declared() -> None:
    """The README's table lists the CONVEYOR_TEST_* and CONVEYOR_CHAOS_*
    variables the suite reads: each must be declared in settings.py, which
    the table follows."""
    declared = {value for name, value in vars(settings).items() if name.startswith("CONVEYOR_")}
    tests = Path(__file__).resolve().parents[1]
    used = {
        name
        for path in tests.rglob("*.py")
        if path != Path(__file__).resolve()  # VAR above is made up
        for name in re.findall(r"\bCONVEYOR_(?:TEST|CHAOS)_[A-Z_]+\b", path.read_text())
    }
    assert used - declared == set()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"lease": float("nan")}, "lease must be a finite number"),
        ({"lease": float("inf")}, "lease must be a finite number"),
        ({"poll_interval": float("nan")}, "poll_interval must be a finite number"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout must be a finite number"),
        ({"heartbeat_interval": 0.0}, "heartbeat_interval must be > 0"),
        ({"recover_interval": -1.0}, "recover_interval must be > 0"),
        ({"scheduler_interval": 0.0}, "scheduler_interval must be > 0"),
        # a heartbeat that comes after the lease ran out renews nothing: the
        # job would be recovered, and run again, while it still runs
        ({"lease": 1.0, "heartbeat_interval": 5.0}, "heartbeat_interval .* shorter than the lease"),
        ({"lease": 2.0, "heartbeat_interval": 2.0}, "heartbeat_interval .* shorter than the lease"),
    ],
)
def test_worker_settings_that_would_run_jobs_twice_or_never_are_refused(
    given: dict[str, float], message: str
) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        WorkerSettings(**given)  # type: ignore[arg-type]


def test_the_default_heartbeat_fits_any_lease() -> None:
    for lease in (0.1, 1.0, 2.5, 30.0, 3600.0):
        assert WorkerSettings(lease=lease).heartbeat_every < lease
