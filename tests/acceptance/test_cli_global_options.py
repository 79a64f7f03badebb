"""`--url` and `--debug` are global options, taken before or after the
subcommand (`conveyor stats --url ...` as well as `conveyor --url ... stats`),
except where a subcommand has an option of its own by that name (demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Conveyor

from .helpers import error_line, invoke

pytestmark = pytest.mark.slow


@pytest.fixture
def existing_db(db_url: str) -> str:
    app = Conveyor(db_url)

    @app.job("noop")
    def noop(payload: object) -> None:
        return None

    app.enqueue_sync("noop", {})
    app.close_sync()
    return db_url


@pytest.mark.parametrize(
    "args",
    [
        ("stats", "--url", "{url}"),
        ("stats", "--url={url}"),
        ("--url", "{url}", "stats"),
        ("jobs", "ls", "--url", "{url}"),
        ("jobs", "--url", "{url}", "ls"),
    ],
)
def test_url_before_or_after_the_subcommand(existing_db: str, args: tuple[str, ...]) -> None:
    result = invoke(*(a.format(url=existing_db) for a in args))
    assert result.exit_code == 0, result.stderr
    assert "noop" in result.stdout or "queued" in result.stdout


def test_debug_after_the_subcommand_shows_the_traceback(in_tmp: Path) -> None:
    result = invoke("worker", "no_such_module_here:app", "--debug")
    assert result.exit_code != 0
    assert "Traceback" in result.stderr or result.exception is not None


def test_a_value_that_looks_like_the_option_is_left_alone(existing_db: str) -> None:
    """`--` ends option parsing: what follows is not moved."""
    result = invoke("stats", "--url", existing_db)
    assert result.exit_code == 0, result.stderr


def test_the_demo_keeps_its_own_url_option(in_tmp: Path) -> None:
    result = invoke("demo", "--url", "sqlite:///nowhere/x.db", "-n", "4")
    assert result.exit_code != 0  # the demo's own --url was used (and its folder is missing)
    assert "nowhere" in error_line(result.stderr) or "nowhere" in result.stdout
