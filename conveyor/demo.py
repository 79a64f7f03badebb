"""`conveyor demo`: watch a worker run a few hundred example jobs.

Four job types show what conveyor does: a fast async job, a flaky one that
fails and is retried with a short backoff (a few fail for good), one that
reports progress and log lines page by page, and a slow sync one that runs in
the worker's thread pool. The jobs are enqueued in one batch and run by an
in-process worker while progress bars follow the app's events; a summary
table closes the show.

Everything the demo needs lives in this module, so it runs from any directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from conveyor.app import Conveyor, EnqueueItem
from conveyor.backoff import Backoff
from conveyor.context import JobContext
from conveyor.events import Event
from conveyor.job import ConveyorError, Job

DEMO_FILE = "conveyor-demo.db"


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    queue: str
    weight: float  # share of the jobs
    blurb: str


KINDS = (
    Kind("email.send", "default", 0.40, "fast, async"),
    Kind("webhook.deliver", "default", 0.20, "flaky: retried, a few fail for good"),
    Kind("report.build", "reports", 0.25, "progress and log lines, page by page"),
    Kind("image.resize", "media", 0.15, "slow, sync (runs in a thread)"),
)


class ReportRequest(BaseModel):
    """A typed payload: validated on enqueue and again when the job runs."""

    title: str
    pages: int = Field(ge=1, le=50)
    seconds_per_page: float = Field(gt=0, le=1)


def build_app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.job("email.send", timeout=5)
    async def send_email(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        await asyncio.sleep(payload["ms"] / 1000)
        return {"sent_to": payload["to"]}

    # Retries 3 means up to 4 attempts; a fixed 0.2 s backoff keeps the demo
    # brisk (the default is exponential from 1 s).
    @app.job("webhook.deliver", retries=3, timeout=5, backoff=Backoff.fixed(0.2))
    async def deliver(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        await asyncio.sleep(0.02)
        if ctx.attempt <= payload["fails"]:
            raise ConnectionError(f"{payload['url']} answered 503 (attempt {ctx.attempt})")
        return {"status": 200, "attempt": ctx.attempt}

    @app.job("report.build", queue="reports", timeout=30)
    async def build_report(payload: ReportRequest, ctx: JobContext) -> dict[str, Any]:
        for page in range(1, payload.pages + 1):
            await asyncio.sleep(payload.seconds_per_page)
            ctx.log("page rendered", page=page)
            await ctx.progress(100 * page / payload.pages)
        return {"title": payload.title, "pages": payload.pages}

    @app.job("image.resize", queue="media", timeout=10)
    def resize(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        # A sync handler cannot be interrupted, so it checks for cancellation
        # (timeout, shutdown) between slices of work.
        deadline = time.monotonic() + payload["seconds"]
        while time.monotonic() < deadline and not ctx.is_cancelled():
            time.sleep(0.05)
        return {"image": payload["image"], "width": payload["width"] // 2}

    return app


def make_jobs(count: int, rng: random.Random) -> list[EnqueueItem]:
    names = rng.choices([k.name for k in KINDS], weights=[k.weight for k in KINDS], k=count)
    names[: len(KINDS)] = [k.name for k in KINDS]  # every type shows up, even with few jobs
    rng.shuffle(names)
    return [(name, _payload(name, i, rng)) for i, name in enumerate(names, 1)]


def _payload(name: str, i: int, rng: random.Random) -> dict[str, Any]:
    if name == "email.send":
        return {"to": f"user{i}@example.com", "ms": rng.randint(10, 80)}
    if name == "webhook.deliver":
        # Mostly fine, some need one to three retries, ~5 % never succeed.
        fails = rng.choices([0, 1, 2, 3, 9], weights=[50, 25, 13, 7, 5])[0]
        return {"url": f"https://hooks.example.com/{i}", "fails": fails}
    if name == "report.build":
        pages = rng.randint(4, 8)
        return {
            "title": f"Report #{i}",
            "pages": pages,
            "seconds_per_page": round(rng.uniform(0.06, 0.14), 3),
        }
    return {
        "image": f"photo-{i}.jpg",
        "width": rng.choice([1024, 2048, 4096]),
        "seconds": round(rng.uniform(0.3, 1.0), 2),
    }


# --------------------------------------------------------------------------- live view


@dataclass(slots=True)
class Tally:
    total: int = 0
    completed: int = 0
    failed: int = 0
    retries: int = 0
    durations: list[float] = field(default_factory=list)
    failures: list[Job] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.completed + self.failed


class Board:
    """Progress bars fed by the app's events (called on the worker's loop)."""

    def __init__(self, tallies: dict[str, Tally], console: Console) -> None:
        self.tallies = tallies
        self.total = sum(t.total for t in tallies.values())
        self.done = asyncio.Event()
        self.backend_line = Text("", style="dim")
        width = max(len(name) for name in tallies)
        # The other columns take about 66 characters: the bar gets the rest,
        # so an 80-column terminal shows every row on one line.
        bar = max(10, min(40, console.width - 66))
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn(f"[bold]{{task.description:<{width}}}"),
            BarColumn(bar_width=bar),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
        )
        # One Live shows the bars and a line under them (Progress alone shows
        # task rows only).
        self.live = Live(
            Group(self.progress, self.backend_line), console=console, refresh_per_second=10
        )
        self.tasks: dict[str, TaskID] = {
            name: self.progress.add_task(name, total=t.total, note="")
            for name, t in tallies.items()
        }
        self.overall = self.progress.add_task("all jobs", total=self.total, note="")

    def listen(self, app: Conveyor) -> None:
        app.on("job.completed", self._finished)
        app.on("job.failed", self._finished)
        app.on("job.retrying", self._retrying)

    def _finished(self, event: Event) -> None:
        job = event.job
        if job is None or job.name not in self.tallies:
            return
        tally = self.tallies[job.name]
        if event.name == "job.completed":
            tally.completed += 1
            if job.started_at is not None and job.finished_at is not None:
                tally.durations.append((job.finished_at - job.started_at).total_seconds())
        else:
            tally.failed += 1
            tally.failures.append(job)
        self.progress.update(self.tasks[job.name], completed=tally.finished, note=_note(tally))
        finished = sum(t.finished for t in self.tallies.values())
        self.progress.update(self.overall, completed=finished)
        if finished >= self.total:
            self.done.set()

    def _retrying(self, event: Event) -> None:
        job = event.job
        if job is not None and job.name in self.tallies:
            tally = self.tallies[job.name]
            tally.retries += 1
            self.progress.update(self.tasks[job.name], note=_note(tally))

    def show_backend(self, counts: dict[str, dict[str, int]]) -> None:
        """What the backend itself reports, next to the overall bar."""
        total = {
            s: sum(q.get(s, 0) for q in counts.values()) for s in ("queued", "running", "scheduled")
        }
        self.backend_line.plain = ""
        self.backend_line.append("  the backend says: ")
        self.backend_line.append(f"{total['queued']} queued", style="blue")
        self.backend_line.append(" · ")
        self.backend_line.append(f"{total['running']} running", style="yellow")
        self.backend_line.append(" · ")
        self.backend_line.append(f"{total['scheduled']} waiting to retry", style="cyan")


def _note(tally: Tally) -> str:
    parts = []
    if tally.retries:
        parts.append(f"[yellow]↻ {tally.retries} retries[/]")
    if tally.failed:
        parts.append(f"[red]✗ {tally.failed} failed[/]")
    return "  ".join(parts)


# --------------------------------------------------------------------------- the run


def run_demo(job_count: int, url: str | None, concurrency: int, console: Console) -> None:
    """Entry point of `conveyor demo` (blocking). With no `url`, the demo uses
    its own SQLite file, removed first so every run starts fresh."""
    if url is None:
        url, path = _demo_database()
        _remove_database(path)
    with _quiet_conveyor_logs():
        asyncio.run(_demo(job_count, url, concurrency, console))


def _demo_database() -> tuple[str, Path]:
    """Here when this directory is writable, else in the temp directory, so
    `conveyor demo` works wherever it is started."""
    folder = Path.cwd()
    if os.access(folder, os.W_OK):
        # Relative, so the commands suggested at the end stay short.
        return f"sqlite:///{DEMO_FILE}", folder / DEMO_FILE
    path = Path(tempfile.gettempdir()) / DEMO_FILE
    return f"sqlite:///{path}", path


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_conveyor_logs() -> Iterator[None]:
    # The worker logs every retry and failure; the bars already show them, and
    # log lines would tear through the live display.
    log = logging.getLogger("conveyor")
    propagate = log.propagate
    handler = logging.NullHandler()
    log.propagate = False
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


async def _demo(job_count: int, url: str, concurrency: int, console: Console) -> None:
    app = build_app(url)
    items = make_jobs(job_count, random.Random(7))
    tallies = {k.name: Tally() for k in KINDS}
    for item in items:
        tallies[item[0]].total += 1
    console.print(_intro(job_count, url, concurrency, tallies))
    async with app:
        started = time.perf_counter()
        await app.enqueue_many(items)
        enqueue_ms = (time.perf_counter() - started) * 1000
        console.print(f"[dim]enqueued {job_count} jobs in one batch in {enqueue_ms:.0f} ms[/]\n")
        board = Board(tallies, console)
        board.listen(app)
        started = time.perf_counter()
        with board.live:
            async with app.worker(concurrency=concurrency, shutdown_timeout=2):
                await _wait_until_done(app, board, limit=60 + job_count * 0.2)
        elapsed = time.perf_counter() - started
    console.print()
    console.print(_summary(tallies, elapsed))
    console.print(_dead_letters(tallies))
    if url.startswith("memory:"):
        console.print(
            "[dim]memory:// keeps nothing after the demo; run it without --url to "
            "explore the jobs afterwards.[/]"
        )
    else:
        console.print(_next_steps(url))


async def _wait_until_done(app: Conveyor, board: Board, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not board.done.is_set():
        if time.monotonic() > deadline:
            raise ConveyorError(f"the demo did not finish within {limit:.0f} s")
        # Poll the backend's own counts as well: they show the queue draining.
        board.show_backend(await app.stats())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(board.done.wait(), timeout=0.5)
    board.show_backend(await app.stats())  # the final word: nothing left running


def _intro(job_count: int, url: str, concurrency: int, tallies: dict[str, Tally]) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    table.add_column()
    for kind in KINDS:
        table.add_row(kind.name, str(tallies[kind.name].total), kind.queue, kind.blurb)
    title = f"[bold]conveyor demo[/] · {job_count} jobs · {url} · concurrency {concurrency}"
    return Panel(table, title=title, title_align="left", border_style="cyan", expand=False)


def _summary(tallies: dict[str, Tally], elapsed: float) -> Table:
    table = Table(title="summary", box=box.ROUNDED, title_style="bold", header_style="bold")
    table.add_column("job type")
    for column in ("jobs", "completed", "failed", "retries", "avg duration"):
        table.add_column(column, justify="right")
    total = Tally()
    for name, tally in tallies.items():
        table.add_row(name, *_summary_cells(tally))
        total.total += tally.total
        total.completed += tally.completed
        total.failed += tally.failed
        total.retries += tally.retries
        total.durations += tally.durations
    table.add_section()
    table.add_row("all", *_summary_cells(total), style="bold")
    rate = total.finished / elapsed if elapsed > 0 else 0.0
    table.caption = f"{total.finished} jobs in {elapsed:.1f} s wall time ({rate:.0f} jobs/s)"
    return table


def _summary_cells(tally: Tally) -> list[Text]:
    average = sum(tally.durations) / len(tally.durations) if tally.durations else None
    return [
        Text(str(tally.total)),
        Text(str(tally.completed), style="green"),
        Text(str(tally.failed), style="red" if tally.failed else "dim"),
        Text(str(tally.retries), style="yellow" if tally.retries else "dim"),
        Text("-" if average is None else f"{average * 1000:.0f} ms"),
    ]


def _dead_letters(tallies: dict[str, Tally], shown: int = 3) -> RenderableType:
    failures = [job for t in tallies.values() for job in t.failures]
    if not failures:
        return Text("no job failed for good", style="green")
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, style="bold", min_width=24)  # ids stay whole: copy-pastable
    table.add_column(no_wrap=True, overflow="ellipsis", style="red")
    for job in failures[:shown]:
        table.add_row(job.id, f"{job.name}: {job.error}")
    heading = Text(f"{len(failures)} job(s) failed for good; they wait in the dead-letter set:")
    more = (
        Text(f"... and {len(failures) - shown} more", style="dim") if len(failures) > shown else ""
    )
    return Group(heading, table, more)


def _next_steps(url: str) -> Panel:
    conveyor, activate = cli_command()
    lines = Text()
    for command, why in (
        (f"{conveyor} --url {url} stats", "counts per queue and state"),
        (f"{conveyor} --url {url} jobs ls --state failed", "the dead-letter set"),
        (f"{conveyor} --url {url} jobs show ID", "one job: payload, result, log lines"),
        (f"{conveyor} --url {url} retry --all-failed", "give the failed ones another go"),
    ):
        lines.append(f"{command}\n", style="bold cyan")
        lines.append(f"    {why}\n", style="dim")
    if activate is not None:
        lines.append(f"\nconveyor is not on your PATH; `source {activate}` puts it there\n")
    lines.rstrip()
    return Panel(
        lines, title="explore the jobs", title_align="left", border_style="dim", expand=False
    )


def cli_command() -> tuple[str, str | None]:
    """How to call this installation's command line from the current directory,
    and the virtualenv's activate script when that would put it on PATH.

    After ./scripts/demo, `conveyor` lives in .venv/bin, which is not on PATH
    until the venv is activated: the suggested commands must run as printed."""
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a link
    script = bin_dir / "conveyor"
    if not script.exists():
        return f"{_shown(Path(sys.executable))} -m conveyor", None
    on_path = shutil.which("conveyor")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "conveyor", None
    activate = bin_dir / "activate"
    return _shown(script), _shown(activate) if activate.exists() else None


def _shown(path: Path) -> str:
    """Relative to the current directory when under it (.venv/bin/conveyor)."""
    try:
        shown = str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        shown = str(path.absolute())
    if "/" not in shown:  # a bare name would be looked up on PATH
        shown = f"./{shown}"
    return shlex.quote(shown)
