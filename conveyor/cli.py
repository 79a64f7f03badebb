"""The `conveyor` command line: run workers, inspect and administer queues.

Every failure is reported as one red `error: ...` line on stderr with a non-zero
exit status; `--debug` (or CONVEYOR_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.json import JSON
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor import __version__
from conveyor.app import DEFAULT_URL, Conveyor
from conveyor.backends import from_url, scheme_of
from conveyor.backends.base import WorkerInfo
from conveyor.job import ConveyorError, Job, JobState, NotSupportedError
from conveyor.scheduler import Schedule
from conveyor.worker import Worker

T = TypeVar("T")

logger = logging.getLogger("conveyor.cli")

STATE_STYLES: dict[str, str] = {
    "scheduled": "cyan",
    "queued": "blue",
    "running": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}

# Worker threads that run sync handlers are named after this prefix (see
# Worker.start); the worker command checks them after shutdown.
_JOB_THREAD_PREFIX = "conveyor-job"


# --------------------------------------------------------------------------- errors


class CliError(Exception):
    """An expected failure: shown as one line, or with its traceback under --debug."""


class _ErrorLine(click.ClickException):
    """What click shows for any failure: one red line on stderr."""

    def show(self, file: Any = None) -> None:
        console = Console(file=file, stderr=file is None, soft_wrap=True, highlight=False)
        console.print(Text.assemble(("error: ", "bold red"), (self.message, "red")))


class _UsageLine(_ErrorLine):
    exit_code = 2  # click's status for usage errors, kept for scripts that test it


def _one_line(message: str) -> str:
    # Exception texts (pydantic, sqlite, import errors) may span lines; the
    # contract is one line, so fold them rather than cut them.
    parts = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(parts) or "unknown error"


def describe(exc: BaseException) -> str:
    """The one-line text shown for an exception."""
    if isinstance(exc, ConveyorError | CliError):
        return _one_line(str(exc)) if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return _one_line(f"{exc.strerror}{where}")
    if isinstance(exc, ImportError):
        return _one_line(str(exc))
    # Anything else is unexpected: name its type, which is usually the best clue.
    return _one_line(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")


def _usage_line(exc: click.UsageError) -> _UsageLine:
    message = exc.format_message()
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]  # match our own lower-case messages
    if exc.ctx is not None:
        message = f"{message.rstrip('.')} (see '{exc.ctx.command_path} --help')"
    return _UsageLine(_one_line(message))


class ConveyorGroup(click.Group):
    """A click group that turns every failure below it into one error line."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # not an error: shows the help
        except click.UsageError as exc:
            raise _usage_line(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, _ErrorLine, click.exceptions.NoArgsIsHelpError):
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from exc
        except click.ClickException as exc:
            raise _ErrorLine(_one_line(exc.format_message())) from exc
        except BrokenPipeError:
            raise  # output piped into `head` and the like: click exits quietly
        except Exception as exc:
            if _debug_enabled(ctx):
                raise
            raise _ErrorLine(describe(exc)) from exc


def _debug_enabled(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug"))


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True, slots=True)
class Options:
    url: str | None
    debug: bool


def _options(ctx: click.Context) -> Options:
    options = ctx.find_root().obj
    assert isinstance(options, Options)
    return options


def _out() -> Console:
    # Made per call so output follows sys.stdout when it is swapped (CliRunner).
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or captured: rich would assume 80 columns and cut ids and
        # names; a pipe has no width, so give rows the room they need.
        console.width = 160
    return console


def _admin_app(ctx: click.Context) -> Conveyor:
    """An app with no job types: enough for every inspect/admin call."""
    app = Conveyor(_options(ctx).url)
    _require_existing_sqlite(app)
    return app


def _require_existing_sqlite(app: Conveyor) -> None:
    # Opening a SQLite URL creates the file. For inspection commands a typo in
    # the URL would then show an empty, brand-new queue: say so instead.
    if scheme_of(app.url) != "sqlite":
        return
    path = getattr(app.backend, "path", None)
    if isinstance(path, str) and not os.path.exists(path):
        raise CliError(
            f"no SQLite database at {path} (check --url or CONVEYOR_URL; "
            "the file appears once a job is enqueued or a worker starts)"
        )


def _run(ctx: click.Context, action: Callable[[Conveyor], Awaitable[T]]) -> T:
    """Run `action(app)` on a fresh event loop with the app opened and closed."""
    return _run_on(_admin_app(ctx), action)


def _run_on(app: Conveyor, action: Callable[[Conveyor], Awaitable[T]]) -> T:
    async def go() -> T:
        async with app:
            return await action(app)

    return asyncio.run(go())


def _parse_state(value: str) -> JobState:
    try:
        return JobState(value.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise CliError(f"unknown job state {value!r}; known: {known}") from None


def _state_text(state: JobState) -> Text:
    return Text(state.value, style=STATE_STYLES.get(state.value, ""))


def _ago(when: datetime | None, now: float | None = None) -> str:
    """`12s ago`, `3h ago`, `in 5m`: compact enough for a table column."""
    if when is None:
        return "-"
    delta = (time.time() if now is None else now) - when.timestamp()
    future, seconds = delta < 0, abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)}{unit}"
            break
    else:
        if seconds < 1:
            return "just now"
        amount = f"{int(seconds)}s"
    return f"in {amount}" if future else f"{amount} ago"


def _local_time(when: datetime | None) -> str:
    if when is None:
        return "-"
    return f"{when.astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')} ({_ago(when)})"


def _snippet(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[-1] if text.strip() else ""  # the last line says most
    return line if len(line) <= width else line[: width - 1] + "…"


def _print_json(value: Any) -> None:
    # Plain click.echo, not rich: --json output is for machines and must not wrap.
    click.echo(json.dumps(value, indent=2, default=str))


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """`30s`, `10m`, `12h`, `7d`, `2w`, or combined like `1h30m`, in seconds.

    A bare number is refused on purpose: in `--older-than 7` the unit is
    anyone's guess, and guessing wrong deletes the wrong jobs."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts).lower() != compact.lower():
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit, e.g. 30s, 10m, 12h, 7d"
        )
    return sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    # A callback rather than a ParamType subclass: ParamType is generic only
    # from click 8.2 on, and we support 8.1.
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


# --------------------------------------------------------------------------- the group


@click.group(
    cls=ConveyorGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--url",
    envvar="CONVEYOR_URL",
    show_envvar=True,
    metavar="URL",
    help=f"Backend URL, e.g. sqlite:///jobs.db or memory:// [default: {DEFAULT_URL}].",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar="CONVEYOR_DEBUG",
    help="Show the full traceback of an error.",
)
@click.version_option(__version__, "-V", "--version", prog_name="conveyor")
@click.pass_context
def cli(ctx: click.Context, url: str | None, debug: bool) -> None:
    """conveyor: background jobs for Python.

    Run workers, watch queues, inspect, cancel, retry or purge jobs, and
    manage recurring schedules.
    """
    ctx.obj = Options(url=url or None, debug=debug)


# --------------------------------------------------------------------------- worker


@cli.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    help="Jobs run at once [env CONVEYOR_CONCURRENCY; default 10].",
)
@click.option(
    "-q",
    "--queues",
    metavar="A,B",
    help="Queues to serve [env CONVEYOR_QUEUES; default: every queue the app's job types use].",
)
@click.option(
    "--scheduler/--no-scheduler",
    default=None,
    help="Fire recurring schedules in this worker [env CONVEYOR_SCHEDULER; default on].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    metavar="S",
    help="Seconds running jobs get to finish after SIGTERM "
    "[env CONVEYOR_SHUTDOWN_TIMEOUT; default 30].",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Seconds a claim lasts without a heartbeat before another worker may take "
    "the job [default 30].",
)
@click.option(
    "--max-stalled",
    type=click.IntRange(min=0),
    metavar="N",
    help="Lease expiries a job survives before it fails [default 1].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@click.pass_context
def worker(
    ctx: click.Context,
    app_path: str,
    concurrency: int | None,
    queues: str | None,
    scheduler: bool | None,
    shutdown_timeout: float | None,
    lease: float | None,
    max_stalled: int | None,
    log_level: str,
) -> None:
    """Run a worker for the Conveyor app at MODULE:APP until SIGTERM/SIGINT.

    MODULE is imported with the current directory on sys.path (like uvicorn);
    with MODULE alone, its `app` attribute (or its only Conveyor) is used.
    Flags win over the environment, which wins over the defaults.
    """
    url = _options(ctx).url
    if url is not None:
        # Conveyor() reads CONVEYOR_URL when the module builds the app.
        os.environ["CONVEYOR_URL"] = url
    app = load_app(app_path)
    if url is not None and app.url != url:
        _use_url(app, url)
    settings: dict[str, Any] = {
        "concurrency": concurrency,
        # None (not given) lets CONVEYOR_QUEUES apply.
        "queues": _split_queues(queues) if queues is not None else None,
        "scheduler": scheduler,
        "shutdown_timeout": shutdown_timeout,
        "lease": lease,
        "max_stalled": max_stalled,
    }
    the_worker = app.worker(**settings)
    _configure_logging(log_level)
    logger.info(
        "conveyor %s: worker for %s, job types: %s",
        __version__,
        app_path,
        ", ".join(sorted(app.registry)) or "none registered",
    )
    asyncio.run(_serve(app, the_worker))
    _exit_if_job_threads_stuck()


async def _serve(app: Conveyor, the_worker: Worker) -> None:
    try:
        await the_worker.run()
    finally:
        # Closing lets the backend finish queued writes and release its
        # connection and thread before asyncio.run tears the loop down.
        await app.close()


def load_app(path: str) -> Conveyor:
    """Import MODULE and return the Conveyor at MODULE:ATTR (dotted ATTR allowed)."""
    module_name, colon, attr = path.partition(":")
    if not module_name or (colon and not attr):
        raise CliError(f"expected MODULE:APP (e.g. myproject.jobs:app), got {path!r}")
    module = _import(module_name)
    if attr:
        found: Any = module
        for part in attr.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    else:
        found = _find_app(module, module_name)
    if not isinstance(found, Conveyor):
        raise CliError(f"{path!r} is a {type(found).__name__}, not a conveyor.Conveyor app")
    return found


def _import(module_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CliError(
                f"cannot import module {module_name!r}: no module named {missing!r} "
                f"(looked in {cwd} and on sys.path)"
            ) from exc
        raise CliError(f"importing {module_name!r} failed: {describe(exc)}") from exc
    except Exception as exc:
        # The module's own code raised: name it, keep the cause for --debug.
        raise CliError(f"importing {module_name!r} failed: {describe(exc)}") from exc


def _find_app(module: Any, module_name: str) -> Conveyor:
    app = getattr(module, "app", None)
    if isinstance(app, Conveyor):
        return app
    names = sorted(n for n, v in vars(module).items() if isinstance(v, Conveyor))
    if len(names) == 1:
        found: Conveyor = getattr(module, names[0])
        return found
    if not names:
        raise CliError(
            f"module {module_name!r} has no Conveyor app; point at it with {module_name}:ATTR"
        )
    raise CliError(
        f"module {module_name!r} has several Conveyor apps ({', '.join(names)}); "
        f"pick one with {module_name}:ATTR"
    )


def _use_url(app: Conveyor, url: str) -> None:
    # The module built its app with an explicit URL, so CONVEYOR_URL did not
    # apply; --url still has to win. The backend is not opened yet at this
    # point (opening happens in worker.start), so swapping it is safe.
    logger.info("--url %s replaces the app's %s", url, app.url)
    app.url = url
    app.backend = from_url(url)


def _split_queues(raw: str) -> tuple[str, ...]:
    queues = tuple(q.strip() for q in raw.split(",") if q.strip())
    if not queues:
        raise CliError(f"--queues needs at least one queue name, got {raw!r}")
    return queues


def _configure_logging(level: str) -> None:
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False, log_time_format="[%X]")
        # RichHandler prints time and level itself; without a formatter of its
        # own basicConfig would give it one that repeats the level.
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        # Files and log collectors want one greppable line per record.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _exit_if_job_threads_stuck(grace: float = 0.5) -> None:
    """A sync handler that ignores `ctx.is_cancelled()` keeps its thread busy,
    and the interpreter joins pool threads at exit, so the process would hang
    after a clean shutdown. Its job was already handed back: leave now."""
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread.name.startswith(_JOB_THREAD_PREFIX):
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threading.enumerate() if t.name.startswith(_JOB_THREAD_PREFIX)]
    if not stuck:
        return
    logger.warning(
        "%d sync handler thread(s) still busy after shutdown; exiting without them", len(stuck)
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------- stats


@cli.command()
@click.option("-w", "--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def stats(ctx: click.Context, watch: bool, as_json: bool) -> None:
    """Counts of jobs per queue and state."""
    if watch and as_json:
        raise CliError("--watch and --json do not go together")
    if not watch:
        app = _admin_app(ctx)
        if as_json:
            _print_json(_run_on(app, lambda app: app.stats()))
        else:
            _out().print(_run_on(app, _stats_view))
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how --watch ends
        _run(ctx, _watch_stats)


async def _watch_stats(app: Conveyor) -> None:
    def render(view: RenderableType) -> RenderableType:
        stamp = Text(
            f"{datetime.now():%H:%M:%S} · refreshing every 1 s · Ctrl-C to stop", style="dim"
        )
        return Group(view, stamp)

    with Live(render(await _stats_view(app)), console=_out(), auto_refresh=False) as live:
        while True:
            await asyncio.sleep(1.0)
            live.update(render(await _stats_view(app)), refresh=True)


async def _stats_view(app: Conveyor) -> RenderableType:
    """The counts table, then who serves which queues and what no live worker can run."""
    table = stats_table(await app.stats(), app.url)
    try:
        workers, unserved = await app.workers(), await app.unserved()
    except NotSupportedError:
        return table
    return Group(table, serving_lines(workers, unserved))


def serving_lines(workers: Sequence[WorkerInfo], unserved: dict[str, dict[str, int]]) -> Text:
    text = Text()
    if workers:
        queues = sorted({queue for info in workers for queue in info.queues})
        plural = "" if len(workers) == 1 else "s"
        text.append(f"{len(workers)} live worker{plural} serving {', '.join(queues)}")
    else:
        text.append("no live worker", style="dim")
    for queue in sorted(unserved):
        for name, count in sorted(unserved[queue].items()):
            text.append(f"\n{queue} · ", style="bold")
            text.append(f"{name}: {count} waiting, no worker serves it", style="yellow")
    return text


def stats_table(counts: dict[str, dict[str, int]], url: str) -> Table:
    states = [s.value for s in JobState]
    table = _compact_table()
    table.title = f"conveyor · {url}"
    table.title_style = "bold"
    table.title_justify = "left"
    table.add_column("queue", style="bold", overflow="ellipsis", max_width=24)
    for state in states:
        header_style = f"bold {STATE_STYLES[state]}"
        table.add_column(state, justify="right", header_style=header_style, no_wrap=True)
    table.add_column("total", justify="right", style="bold", no_wrap=True)
    totals = dict.fromkeys(states, 0)
    for queue in sorted(counts):
        row = counts[queue]
        for state in states:
            totals[state] += row.get(state, 0)
        table.add_row(queue, *_count_cells(row, states))
    if len(counts) > 1:
        table.add_section()
        table.add_row("all", *_count_cells(totals, states), style="bold")
    if not counts:
        table.caption = "no jobs yet"
    return table


def _count_cells(row: dict[str, int], states: Sequence[str]) -> list[Text]:
    cells = [
        Text(str(row.get(s, 0)), style=STATE_STYLES[s] if row.get(s, 0) else "dim") for s in states
    ]
    cells.append(Text(str(sum(row.get(s, 0) for s in states))))
    return cells


# --------------------------------------------------------------------------- jobs


@cli.group(cls=ConveyorGroup)
def jobs() -> None:
    """List and inspect jobs."""


@jobs.command("ls")
@click.option(
    "-s",
    "--state",
    help="Only jobs in this state (scheduled, queued, running, completed, failed, cancelled).",
)
@click.option("-n", "--name", help="Only jobs of this type.")
@click.option("-q", "--queue", help="Only jobs of this queue.")
@click.option("-l", "--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def jobs_ls(
    ctx: click.Context,
    state: str | None,
    name: str | None,
    queue: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    wanted = _parse_state(state) if state is not None else None
    found = _run(ctx, lambda app: app.list_jobs(state=wanted, name=name, queue=queue, limit=limit))
    if as_json:
        _print_json([job.to_dict() for job in found])
        return
    console = _out()
    console.print(jobs_table(found, limit, console.width))


def _compact_table(gap: int = 2) -> Table:
    # SIMPLE_HEAD draws a blank column separator: with right padding it makes
    # the gap between columns, and no edge padding keeps rows flush left.
    return Table(
        box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, gap - 1, 0, 0)
    )


_JOB_COLUMNS = ("id", "name", "queue", "state", "att", "pri", "created", "error")


def jobs_table(found: Sequence[Job], limit: int, width: int) -> Table:
    now = time.time()
    rows = [_job_row(job, now) for job in found]
    columns, gap, error_width = _jobs_layout(found, rows, width)
    table = _compact_table(gap)
    for name in columns:
        if name == "error":
            table.add_column(name, style="red", no_wrap=True, max_width=error_width)
        else:
            table.add_column(
                name,
                no_wrap=True,
                style="bold" if name == "id" else "",
                min_width=24 if name == "id" else None,  # ids never shrink: they get copied
                justify="right" if name in ("att", "pri") else "left",
            )
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    notes = []
    if not found:
        notes.append("no jobs match")
    elif len(found) == limit:
        notes.append(f"showing the newest {limit}; use --limit for more")
    if any(job.error for job in found) and "error" not in columns:
        notes.append("errors hidden (narrow terminal): see jobs show ID, or --json")
    table.caption = "\n".join(notes) or None
    return table


def _job_row(job: Job, now: float) -> dict[str, str | Text]:
    return {
        "id": job.id,
        "name": job.name,
        "queue": job.queue,
        "state": _state_text(job.state),
        "att": f"{job.attempts}/{job.max_retries + 1}",
        "pri": str(job.priority),
        "created": _ago(job.created_at, now),
        "error": _snippet(job.error, 200),
    }


def _jobs_layout(
    found: Sequence[Job], rows: Sequence[dict[str, str | Text]], width: int
) -> tuple[list[str], int, int]:
    """Which columns to show, the gap between them, and the error column's width.

    Columns holding only defaults or blanks go, to make room on narrow
    terminals; the error column gets what the others leave, or goes when that
    is too little to say anything."""
    columns = list(_JOB_COLUMNS)
    if all(job.priority == 0 for job in found):
        columns.remove("pri")
    if not any(job.error for job in found):
        columns.remove("error")
    fixed = [c for c in columns if c != "error"]
    needed = sum(max([len(c)] + [len(str(r[c])) for r in rows]) for c in fixed)
    error_min = 12 if "error" in columns else 0
    gap = 2 if needed + 2 * len(columns) + error_min <= width else 1
    error_width = width - needed - gap * len(fixed) - 2
    if error_min and error_width < error_min:
        columns.remove("error")
        gap = 2 if needed + 2 * len(fixed) <= width else 1
    return columns, gap, error_width


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of panels.")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Everything about one job: fields, payload, result, log lines, error."""
    job = _run(ctx, lambda app: app.get_job(job_id))
    if job is None:
        raise CliError(f"no job with id {job_id!r}")
    if as_json:
        _print_json(job.to_dict())
        return
    _out().print(job_view(job))


def job_view(job: Job) -> RenderableType:
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id),
        ("name", job.name),
        ("queue", job.queue),
        ("state", _state_text(job.state)),
        ("attempts", f"{job.attempts} of {job.max_retries + 1} allowed"),
        ("priority", str(job.priority)),
        ("key", job.key or "-"),
        ("progress", f"{job.progress:g}%"),
        ("timeout", "none" if job.timeout is None else f"{job.timeout:g} s"),
        ("created", _local_time(job.created_at)),
        ("run at", _local_time(job.run_at)),
        ("started", _local_time(job.started_at)),
        ("finished", _local_time(job.finished_at)),
    ]
    if job.stalls:
        rows.append(("stalls", str(job.stalls)))
    if job.cancel_requested:
        rows.append(("cancel", Text("requested", style="magenta")))
    for label, value in rows:
        fields.add_row(label, value)
    parts: list[RenderableType] = [Panel(fields, title=f"job {job.id}", title_align="left")]
    parts.append(Panel(JSON.from_data(job.payload), title="payload", title_align="left"))
    if job.result is not None:
        parts.append(Panel(JSON.from_data(job.result), title="result", title_align="left"))
    if job.logs:
        parts.append(Panel(_logs_table(job.logs), title="log", title_align="left"))
    if job.error:
        parts.append(
            Panel(
                Text(job.error, style="red"), title="error", title_align="left", border_style="red"
            )
        )
    return Group(*parts)


def _logs_table(logs: Sequence[dict[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    table.add_column(style="cyan")
    for entry in logs:
        at = entry.get("at")
        stamp = (
            datetime.fromtimestamp(at, UTC).astimezone().strftime("%H:%M:%S.%f")[:-3]
            if isinstance(at, int | float)
            else "-"
        )
        extra = " ".join(f"{k}={v}" for k, v in entry.items() if k not in ("at", "msg"))
        table.add_row(stamp, str(entry.get("msg", "")), extra)
    return table


# --------------------------------------------------------------------------- cancel / retry


@cli.command()
@click.argument("job_id", metavar="ID", required=False)
@click.option("-n", "--name", help="With --key: the job type of the job to cancel.")
@click.option("-k", "--key", help="With --name: the idempotency key of the job to cancel.")
@click.pass_context
def cancel(ctx: click.Context, job_id: str | None, name: str | None, key: str | None) -> None:
    """Cancel a job by ID, or by --name and --key.

    A pending job is cancelled at once; a running one is told to stop at its
    worker's next heartbeat."""
    if job_id is not None and (name or key):
        raise CliError("give either a job ID or --name with --key, not both")
    if job_id is None and not (name and key):
        raise CliError("give a job ID, or both --name and --key")
    message = _run(ctx, lambda app: _cancel(app, job_id, name, key))
    _out().print(message)


async def _cancel(app: Conveyor, job_id: str | None, name: str | None, key: str | None) -> Text:
    if job_id is None:
        assert name is not None and key is not None
        by_key = await app.get_job_by_key(key)
        # The name guards against cancelling another type's job that reused the key.
        if by_key is None or by_key.name != name:
            raise CliError(f"no {name!r} job with key {key!r}")
        job_id = by_key.id
    before = await app.get_job(job_id)
    if before is None:
        raise CliError(f"no job with id {job_id!r}")
    if not await app.cancel(job_id):
        raise CliError(f"job {job_id} is already {before.state.value}; nothing to cancel")
    after = await app.get_job(job_id)
    if after is not None and after.state is JobState.RUNNING:
        return Text(
            f"cancel requested: job {job_id} ({before.name}) is running; "
            "its worker stops it at the next heartbeat",
            style="yellow",
        )
    return Text(f"cancelled job {job_id} ({before.name})", style="green")


@cli.command()
@click.argument("job_id", metavar="ID", required=False)
@click.option("--all-failed", is_flag=True, help="Retry every failed job.")
@click.option("-q", "--queue", help="With --all-failed: only this queue.")
@click.option("-n", "--name", help="With --all-failed: only jobs of this type.")
@click.pass_context
def retry(
    ctx: click.Context, job_id: str | None, all_failed: bool, queue: str | None, name: str | None
) -> None:
    """Queue a failed or cancelled job again, or every failed job."""
    if (job_id is None) == (not all_failed):
        raise CliError("give either a job ID or --all-failed")
    if job_id is not None and (queue or name):
        raise CliError("--queue and --name only apply with --all-failed")
    if job_id is not None:
        job = _run(ctx, lambda app: _retry_one(app, job_id))
        _out().print(Text(f"queued job {job.id} ({job.name}) again", style="green"))
        return
    count = _run(ctx, lambda app: _retry_all_failed(app, queue, name))
    style = "green" if count else "dim"
    _out().print(Text(f"queued {count} failed job(s) again", style=style))


async def _retry_one(app: Conveyor, job_id: str) -> Job:
    job = await app.retry(job_id)
    if job is not None:
        return job
    existing = await app.get_job(job_id)
    if existing is None:
        raise CliError(f"no job with id {job_id!r}")
    raise CliError(
        f"job {job_id} is {existing.state.value}; only failed or cancelled jobs can be retried"
    )


async def _retry_all_failed(app: Conveyor, queue: str | None, name: str | None) -> int:
    # Collect the ids first: retrying moves jobs out of `failed`, which would
    # shift the pages under an offset that advances while we retry.
    ids: list[str] = []
    page = 500
    while True:
        batch = await app.list_jobs(
            state=JobState.FAILED, name=name, queue=queue, limit=page, offset=len(ids)
        )
        ids.extend(job.id for job in batch)
        if len(batch) < page:
            break
    count = 0
    for job_id in ids:
        if await app.retry(job_id) is not None:
            count += 1
    return count


# --------------------------------------------------------------------------- purge


@cli.command()
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    default=("completed",),
    show_default=True,
    metavar="STATE",
    help="Delete jobs in this state; repeat for several (running jobs are never purged).",
)
@click.option(
    "--older-than",
    callback=_duration_option,
    metavar="AGE",
    help="Only jobs older than AGE, e.g. 30s, 10m, 12h, 7d.",
)
@click.option("-q", "--queue", help="Only this queue.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(
    ctx: click.Context,
    states: tuple[str, ...],
    older_than: float | None,
    queue: str | None,
    yes: bool,
) -> None:
    """Delete finished jobs (by default completed ones)."""
    parsed = [_parse_state(s) for s in states]
    if JobState.RUNNING in parsed:
        raise CliError("running jobs cannot be purged; cancel them first")
    app = _admin_app(ctx)  # before the prompt: a bad URL fails without asking first
    if not yes:
        what = "/".join(s.value for s in parsed)
        age = f" older than {_format_seconds(older_than)}" if older_than is not None else ""
        where = f"queue {queue!r}" if queue else "all queues"
        _confirm(f"Delete {what} jobs{age} from {where} of {app.url}?", "nothing was purged")
    removed = _run_on(app, lambda app: app.purge(parsed, older_than=older_than, queue=queue))
    _out().print(Text(f"purged {removed} job(s)", style="green" if removed else "dim"))


def _confirm(question: str, otherwise: str) -> None:
    try:
        confirmed = click.confirm(question, default=False)
    except click.Abort:  # end of input, e.g. no terminal to ask on
        confirmed = False
    if not confirmed:
        raise CliError(f"not confirmed; {otherwise} (pass --yes to skip the question)")


def _format_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --------------------------------------------------------------------------- recurring


@cli.group(cls=ConveyorGroup)
def recurring() -> None:
    """List, enable, disable or delete recurring schedules.

    Schedules are created in code with `app.recurring(...)`; a worker with the
    scheduler on fires them."""


@recurring.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def recurring_ls(ctx: click.Context, as_json: bool) -> None:
    """List every recurring schedule."""
    schedules = _run(ctx, lambda app: app.list_recurring())
    if as_json:
        _print_json([_schedule_dict(s) for s in schedules])
        return
    _out().print(recurring_table(schedules))


def _schedule_dict(schedule: Schedule) -> dict[str, Any]:
    data = dataclasses.asdict(schedule)
    data["every"] = None if schedule.every is None else schedule.every.total_seconds()
    for stamp in ("next_run", "last_run"):
        value = data[stamp]
        data[stamp] = None if value is None else value.isoformat()
    return data


def _in_zone(moment: datetime | None, zone: str) -> str:
    """A wall-clock time in `zone`, with its offset (DST shows in the offset)."""
    if moment is None:
        return "-"
    try:
        local = moment.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        return moment.isoformat(timespec="seconds")
    return local.strftime("%Y-%m-%d %H:%M:%S %z")


def recurring_table(schedules: Sequence[Schedule]) -> Table:
    table = _compact_table()
    columns = [
        "name",
        "job",
        "when",
        "tz",
        "enabled",
        "next run (its tz)",
        "next run (UTC)",
        "last run",
        "last error",
    ]
    if not any(s.last_error for s in schedules):
        columns.remove("last error")
    for name in columns:
        table.add_column(name, no_wrap=name != "last error", style="bold" if name == "name" else "")
    for schedule in schedules:
        cells: list[str | Text] = [
            schedule.name,
            schedule.job_name,
            schedule.spec,
            schedule.tz,
            Text("yes", style="green") if schedule.enabled else Text("no", style="dim"),
            _in_zone(schedule.next_run, schedule.tz),
            _in_zone(schedule.next_run, "UTC"),
            _ago(schedule.last_run),
            Text(_snippet(schedule.last_error), style="red"),
        ]
        table.add_row(*cells[: len(columns)])
    if not schedules:
        table.caption = "no recurring schedules"
    return table


@recurring.command("enable")
@click.argument("name")
@click.pass_context
def recurring_enable(ctx: click.Context, name: str) -> None:
    """Fire schedule NAME again (its next run counts from now)."""
    _switch_schedule(ctx, name, "enabled", lambda app: app.enable_recurring(name))


@recurring.command("disable")
@click.argument("name")
@click.pass_context
def recurring_disable(ctx: click.Context, name: str) -> None:
    """Stop firing schedule NAME but keep it."""
    _switch_schedule(ctx, name, "disabled", lambda app: app.disable_recurring(name))


@recurring.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def recurring_delete(ctx: click.Context, name: str, yes: bool) -> None:
    """Remove schedule NAME (code that calls app.recurring creates it again)."""
    if not yes:
        _confirm(f"Delete the recurring schedule {name!r}?", "nothing was deleted")
    _switch_schedule(ctx, name, "deleted", lambda app: app.delete_recurring(name))


def _switch_schedule(
    ctx: click.Context, name: str, done: str, action: Callable[[Conveyor], Awaitable[bool]]
) -> None:
    if not _run(ctx, action):
        raise CliError(f"no recurring schedule named {name!r}")
    _out().print(Text(f"{done} recurring schedule {name!r}", style="green"))


# --------------------------------------------------------------------------- bench / demo


@cli.command()
@click.option("-b", "--backends", default="memory,sqlite", show_default=True, metavar="A,B")
@click.option(
    "-n", "--jobs", "job_count", type=click.IntRange(min=1), default=2000, show_default=True
)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=20, show_default=True)
def bench(backends: str, job_count: int, concurrency: int) -> None:
    """Measure enqueue and processing throughput per backend."""
    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise CliError(f"--backends needs at least one backend name, got {backends!r}")
    # Imported here: the benchmark is optional tooling and must not slow down
    # or break the other commands.
    try:
        module = importlib.import_module("conveyor.bench")
    except ImportError as exc:
        raise CliError(f"the benchmark is not available: {describe(exc)}") from exc
    run_bench: Callable[[list[str], int, int], None] = module.run_bench
    run_bench(names, job_count, concurrency)


@cli.command()
@click.option(
    "-n", "--jobs", "job_count", type=click.IntRange(min=4), default=300, show_default=True
)
@click.option(
    "--url",
    "demo_url",
    metavar="URL",
    help="Where the demo keeps its jobs [default: a fresh sqlite:///conveyor-demo.db, "
    "removed at start]. The global --url and CONVEYOR_URL do not apply.",
)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
def demo(job_count: int, demo_url: str | None, concurrency: int) -> None:
    """Run a few hundred example jobs with live progress bars (about 10 s).

    Fast, flaky, progress-reporting and slow sync jobs, run by an in-process
    worker; ends with a summary per job type."""
    from conveyor.demo import run_demo

    run_demo(job_count, demo_url, concurrency, _out())


def main() -> None:
    """The `conveyor` console script."""
    cli.main(prog_name="conveyor")
