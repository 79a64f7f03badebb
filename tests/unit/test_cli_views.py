"""What `jobs ls` shows, rendered without a backend: the run-at column for
waiting jobs, and stalls apart from attempts."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from rich.console import Console

from conveyor import Conveyor
from conveyor.cli import cli
from conveyor.cli.views import jobs_table
from conveyor.job import Job, JobState


def _render(jobs: list[Job], width: int = 160) -> str:
    console = Console(width=width, file=io.StringIO())
    console.print(jobs_table(jobs, limit=50, width=width))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def _job(n: int, state: JobState, **fields: object) -> Job:
    now = datetime.fromtimestamp(time.time(), UTC)
    defaults: dict[str, object] = {"created_at": now, "run_at": now, "max_retries": 3}
    return Job(
        id=f"job{n:021d}",
        name="send",
        queue="default",
        payload=None,
        state=state,
        **{**defaults, **fields},  # type: ignore[arg-type]
    )


def _header(text: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith("id"))


def test_waiting_jobs_show_when_they_run() -> None:
    later = datetime.fromtimestamp(time.time() + 2 * 3600 + 30, UTC)
    text = _render([_job(1, JobState.SCHEDULED, run_at=later), _job(2, JobState.COMPLETED)])
    header = _header(text)
    assert "run at" in header
    lines = text.splitlines()
    scheduled = next(line for line in lines if "scheduled" in line)
    assert scheduled[header.index("run at") :].startswith("in 2h")
    completed = next(line for line in lines if "completed" in line)
    # A finished job's run-at says nothing: the cell is blank, att comes next.
    assert completed[header.index("run at") :].split()[0] == "0/4"


def test_no_run_at_column_when_nothing_waits() -> None:
    text = _render([_job(1, JobState.COMPLETED), _job(2, JobState.FAILED, error="boom")])
    assert "run at" not in _header(text)


def test_stalls_are_shown_apart_from_attempts() -> None:
    stalled = _job(1, JobState.QUEUED, attempts=2, max_retries=0, stalls=1)
    text = _render([stalled, _job(2, JobState.COMPLETED, attempts=1)])
    header = _header(text)
    assert "stalls" in header
    row = next(line for line in text.splitlines() if "queued" in line)
    assert row[header.index("att") :].split()[:2] == ["2/1", "1"]  # att, then stalls
    assert "att counts every claim, also those lost to a stall" in text  # explains 2/1


def test_no_stalls_column_without_stalls() -> None:
    text = _render([_job(1, JobState.COMPLETED, attempts=1)])
    assert "stalls" not in text


def test_text_from_jobs_is_shown_as_written_not_as_markup(tmp_path: Path) -> None:
    """Names, queues and errors are the application's text: square brackets
    in them are neither styles to apply nor tags to choke on."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    app = Conveyor(url)

    @app.job("mk[/]", queue="q[/bold]", retries=0)
    def failing(payload: object) -> None:
        raise ValueError("field 'sku' must match [a-z]+ and [bold] tags [/]")

    job = app.enqueue_sync("mk[/]", {})
    app.drain_sync()
    app.close_sync()
    runner = CliRunner()
    listed = runner.invoke(cli, ["--url", url, "jobs", "ls"])
    assert listed.exit_code == 0, listed.output
    assert "mk[/]" in listed.output and "q[/bold]" in listed.output
    assert "[a-z]+ and [bold] tags" in listed.output
    shown = runner.invoke(cli, ["--url", url, "jobs", "show", job.id])
    assert shown.exit_code == 0, shown.output
    assert "must match [a-z]+ and [bold] tags [/]" in shown.output
    paused = runner.invoke(cli, ["--url", url, "pause", "reports[/]"])
    assert (paused.exit_code, paused.output.strip()) == (0, "queue reports[/] paused")


def test_control_characters_in_job_text_do_not_reach_the_terminal(tmp_path: Path) -> None:
    """A job's text may hold terminal escape sequences (set the window's
    title, clear the screen): shown escaped, never sent as they are."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    app = Conveyor(url)
    title, clear = "\x1b]0;owned\x07", "\x1b[2J"

    @app.job(f"mk{clear}", queue="q\x9b", retries=0)
    def failing(payload: object, ctx: Any) -> None:
        ctx.log(f"line{title}")
        raise ValueError(f"bad{clear}")

    job = app.enqueue_sync(f"mk{clear}", {})
    app.drain_sync()
    app.close_sync()
    runner = CliRunner()
    for args in (["jobs", "ls"], ["jobs", "show", job.id], ["stats"], ["pause", "p\x1b[2J"]):
        shown = runner.invoke(cli, ["--url", url, *args])
        assert shown.exit_code == 0, shown.output
        assert "\x1b" not in shown.output and "\x07" not in shown.output, (args, shown.output)
        assert "\x9b" not in shown.output
    listed = runner.invoke(cli, ["--url", url, "jobs", "show", job.id])
    assert "mk\\x1b[2J" in listed.output and "bad\\x1b[2J" in listed.output


def test_the_dashboard_refuses_a_port_that_does_not_exist() -> None:
    refused = CliRunner().invoke(cli, ["--url", "memory://", "dashboard", "--port", "99999"])
    assert refused.exit_code == 2 and "99999" in refused.output
