"""Every CLI failure is one red line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Conveyor, UnsupportedURLError

from .helpers import error_line, invoke, run_conveyor

pytestmark = pytest.mark.slow


@pytest.fixture
def existing_db(db_url: str) -> str:
    """A SQLite file that exists (the CLI refuses to create one by inspecting it)."""
    app = Conveyor(db_url)
    app.stats_sync()
    app.close_sync()
    return db_url


def test_unknown_module(in_tmp: Path) -> None:
    result = invoke("worker", "no_such_module_here:app")
    assert result.exit_code == 1
    line = error_line(result.stderr)
    assert "cannot import module 'no_such_module_here'" in line


def test_module_without_app(in_tmp: Path) -> None:
    (in_tmp / "noapp_mod.py").write_text("value = 42\n")
    result = invoke("worker", "noapp_mod")
    assert result.exit_code == 1
    assert "module 'noapp_mod' has no Conveyor app" in error_line(result.stderr)


def test_attribute_that_is_not_an_app(in_tmp: Path) -> None:
    (in_tmp / "notapp_mod.py").write_text("value = 42\n")
    result = invoke("worker", "notapp_mod:value")
    assert result.exit_code == 1
    assert "'notapp_mod:value' is a int, not a conveyor.Conveyor app" in error_line(result.stderr)


def test_missing_attribute(in_tmp: Path) -> None:
    (in_tmp / "attr_mod.py").write_text("value = 42\n")
    result = invoke("worker", "attr_mod:application")
    assert result.exit_code == 1
    assert "module 'attr_mod' has no attribute 'application'" in error_line(result.stderr)


def test_module_that_raises_on_import(in_tmp: Path) -> None:
    (in_tmp / "broken_mod.py").write_text("import json\n\n1 / 0\n")
    result = invoke("worker", "broken_mod:app")
    assert result.exit_code == 1
    line = error_line(result.stderr)
    assert "importing 'broken_mod' failed" in line
    assert "ZeroDivisionError" in line


def test_bad_url_scheme() -> None:
    result = invoke("--url", "nosuch://somewhere", "stats")
    assert result.exit_code == 1
    assert "unsupported backend URL scheme 'nosuch://'" in error_line(result.stderr)


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = invoke("--url", f"sqlite:///{missing}", "stats")
    assert result.exit_code == 1
    assert f"no SQLite database at {missing}" in error_line(result.stderr)
    assert not missing.exists()


def test_show_unknown_job(existing_db: str) -> None:
    result = invoke("--url", existing_db, "jobs", "show", "0123456789abcdef")
    assert result.exit_code == 1
    assert error_line(result.stderr) == "error: no job with id '0123456789abcdef'"


def test_unknown_state(existing_db: str) -> None:
    result = invoke("--url", existing_db, "jobs", "ls", "--state", "foo")
    assert result.exit_code == 1
    assert error_line(result.stderr).startswith("error: unknown job state 'foo'")


@pytest.mark.parametrize("age", ["7", "7x", "d7", "1h30", ""])
def test_bad_older_than(existing_db: str, age: str) -> None:
    result = invoke("--url", existing_db, "purge", "--older-than", age, "--yes")
    assert result.exit_code == 2
    line = error_line(result.stderr)
    assert "invalid value for '--older-than'" in line
    assert "e.g. 30s, 10m, 12h, 7d" in line


def test_usage_errors_are_one_line_too() -> None:
    result = invoke("jobs", "ls", "--limit", "0")
    assert result.exit_code == 2
    assert "'--limit'" in error_line(result.stderr)
    result = invoke("no-such-command")
    assert result.exit_code == 2
    assert "no such command 'no-such-command'" in error_line(result.stderr)


def test_cancel_needs_an_id_or_name_and_key(existing_db: str) -> None:
    result = invoke("--url", existing_db, "cancel", "--key", "k")
    assert result.exit_code == 1
    assert "give a job ID, or both --name and --key" in error_line(result.stderr)


def test_debug_shows_the_exception() -> None:
    # In-process, --debug lets the exception out (click's runner catches it);
    # the subprocess test below checks the printed traceback.
    result = invoke("--debug", "--url", "nosuch://x", "stats")
    assert result.exit_code == 1
    assert isinstance(result.exception, UnsupportedURLError)


def test_errors_from_a_real_process(tmp_path: Path) -> None:
    unknown = run_conveyor("worker", "no_such_module_here:app", cwd=tmp_path)
    assert unknown.returncode == 1
    assert "cannot import module 'no_such_module_here'" in error_line(unknown.stderr)
    assert unknown.stdout == ""

    bad_url = run_conveyor("--url", "nosuch://x", "jobs", "ls", cwd=tmp_path)
    assert bad_url.returncode == 1
    assert "unsupported backend URL scheme" in error_line(bad_url.stderr)

    debug = run_conveyor("--debug", "--url", "nosuch://x", "jobs", "ls", cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "UnsupportedURLError" in debug.stderr
