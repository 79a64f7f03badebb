"""How the commands show things: rich tables and panels, times and snippets.

Nothing here talks to a backend; every function takes what it shows."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich import box
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor.backends.stores import WorkerInfo
from conveyor.job import PENDING_STATES, Job, JobState
from conveyor.scheduler import Schedule

STATE_STYLES: dict[str, str] = {
    "scheduled": "cyan",
    "queued": "blue",
    "running": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}
# How each attempt of a job's history ended (job.py's AttemptOutcome).
ATTEMPT_STYLES: dict[str, str] = {
    "completed": "green",
    "failed": "red",
    "retrying": "yellow",
    "timed out": "red",
    "cancelled": "magenta",
    "stalled": "yellow",
    "handed back": "blue",
}


# --------------------------------------------------------------------------- small pieces


def state_text(state: JobState) -> Text:
    return Text(state.value, style=STATE_STYLES.get(state.value, ""))


def ago(when: datetime | None, now: float | None = None) -> str:
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


def local_time(when: datetime | None) -> str:
    if when is None:
        return "-"
    return f"{when.astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')} ({ago(when)})"


def snippet(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[-1] if text.strip() else ""  # the last line says most
    return line if len(line) <= width else line[: width - 1] + "…"


def compact_table(gap: int = 2) -> Table:
    # SIMPLE_HEAD draws a blank column separator: with right padding it makes
    # the gap between columns, and no edge padding keeps rows flush left.
    return Table(
        box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, gap - 1, 0, 0)
    )


# --------------------------------------------------------------------------- stats


def serving_lines(workers: Sequence[WorkerInfo], unserved: dict[str, dict[str, int]]) -> Text:
    """Who serves which queues, and the job types waiting that no live worker runs."""
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


def paused_line(paused: Sequence[str]) -> Text:
    """The paused queues, which workers do not claim from."""
    if not paused:
        return Text("no queue paused", style="dim")
    text = Text("paused: ", style="bold yellow")
    text.append(", ".join(paused), style="yellow")
    text.append(" (workers claim nothing from them; `conveyor resume QUEUE`)", style="dim")
    return text


def stats_table(counts: dict[str, dict[str, int]], url: str, paused: Sequence[str] = ()) -> Table:
    states = [s.value for s in JobState]
    table = compact_table()
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
        label = Text(queue)
        if queue in paused:
            label.append(" paused", style="yellow")
        table.add_row(label, *_count_cells(row, states))
    if len(counts) > 1:
        table.add_section()
        table.add_row("all", *_count_cells(totals, states), style="bold")
    if not counts:
        table.caption = "no jobs yet"
    return table


def workers_table(workers: Sequence[WorkerInfo], now: float | None = None) -> Table:
    """One row per worker: where it runs, what it serves, the jobs it ran at
    its latest beat (with how long each had run then), and that beat."""
    now = time.time() if now is None else now
    table = compact_table()
    table.add_column("worker", style="bold", overflow="fold")
    table.add_column("host", overflow="ellipsis", max_width=24)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("queues", overflow="fold")
    table.add_column("busy", justify="right", no_wrap=True)
    table.add_column("running now", overflow="fold")
    table.add_column("last beat", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for info in workers:
        running = Text()
        for index, job in enumerate(info.running):
            if index:
                running.append("\n")
            running.append(f"{job.name} ", style="bold")
            running.append(f"{job.id} ", style="dim")
            running.append(f"for {describe_age(info.last_seen - job.started_at)}")
        concurrency = str(info.concurrency) if info.concurrency else "?"
        status = Text("stale", style="red") if info.stale else Text("live", style="green")
        table.add_row(
            info.id,
            info.host,
            str(info.pid),
            ", ".join(info.queues),
            f"{len(info.running)}/{concurrency}",
            running if info.running else Text("idle", style="dim"),
            ago(datetime.fromtimestamp(info.last_seen, UTC), now),
            status,
        )
    if not workers:
        table.caption = "no worker"
    return table


def describe_age(seconds: float) -> str:
    """`850 ms`, `12 s`, `3 min 5 s`, `2 h 4 min`: how long a job has run."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def broker_table(rows: Sequence[dict[str, Any]]) -> Table:
    """A broker's own counts per queue and dead-letter queue, by its names."""
    table = compact_table()
    table.title = "broker counts (approximate, as the broker reports them)"
    table.title_justify = "left"
    table.add_column("queue", style="bold", overflow="fold")
    names = sorted({k for row in rows for k, v in row.items() if isinstance(v, int)})
    for name in names:
        table.add_column(name.removeprefix("Approximate"), justify="right", no_wrap=True)
    for row in rows:
        table.add_row(str(row["queue"]), *(str(row.get(n, "")) for n in names))
        dead = row.get("dead_letter_queue")
        if dead:
            table.add_row(
                f"  dead letters: {dead['queue']}", *(str(dead.get(n, "")) for n in names)
            )
    return table


def _count_cells(row: dict[str, int], states: Sequence[str]) -> list[Text]:
    cells = [
        Text(str(row.get(s, 0)), style=STATE_STYLES[s] if row.get(s, 0) else "dim") for s in states
    ]
    cells.append(Text(str(sum(row.get(s, 0) for s in states))))
    return cells


# --------------------------------------------------------------------------- jobs


_JOB_COLUMNS = (
    "id",
    "name",
    "queue",
    "state",
    "run at",
    "att",
    "stalls",
    "pri",
    "created",
    "error",
)
_RIGHT_ALIGNED = ("att", "stalls", "pri")


def jobs_table(found: Sequence[Job], limit: int, width: int) -> Table:
    now = time.time()
    rows = [_job_row(job, now) for job in found]
    columns, gap, error_width = _jobs_layout(found, rows, width)
    table = compact_table(gap)
    for name in columns:
        if name == "error":
            table.add_column(name, style="red", no_wrap=True, max_width=error_width)
        else:
            table.add_column(
                name,
                no_wrap=True,
                style="bold" if name == "id" else "",
                min_width=24 if name == "id" else None,  # ids never shrink: they get copied
                justify="right" if name in _RIGHT_ALIGNED else "left",
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
    if "stalls" in columns:
        # A job whose lease expired is claimed again, so att can read 2/1.
        notes.append("att counts every claim, also those lost to a stall (lease expired mid-run)")
    table.caption = "\n".join(notes) or None
    return table


def _job_row(job: Job, now: float) -> dict[str, str | Text]:
    return {
        "id": job.id,
        "name": job.name,
        "queue": job.queue,
        "state": state_text(job.state),
        # When a waiting job runs (a delay, a retry's backoff, or due since).
        "run at": ago(job.run_at, now) if job.state in PENDING_STATES else "",
        "att": f"{job.attempts}/{job.max_retries + 1}",
        "stalls": str(job.stalls) if job.stalls else "",
        "pri": str(job.priority),
        "created": ago(job.created_at, now),
        "error": snippet(job.error, 200),
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
    if not any(job.state in PENDING_STATES for job in found):
        columns.remove("run at")
    if not any(job.stalls for job in found):
        columns.remove("stalls")
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


def job_view(job: Job) -> RenderableType:
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id),
        ("name", job.name),
        ("version", str(job.version)),
        ("queue", job.queue),
        ("state", state_text(job.state)),
        ("attempts", f"{job.attempts} of {job.max_retries + 1} allowed"),
        ("priority", str(job.priority)),
        ("key", job.key or "-"),
        ("progress", f"{job.progress:g}%"),
        ("timeout", "none" if job.timeout is None else f"{job.timeout:g} s"),
        ("created", local_time(job.created_at)),
        ("run at", local_time(job.run_at)),
        ("started", local_time(job.started_at)),
        ("finished", local_time(job.finished_at)),
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
    if job.history:
        parts.append(Panel(_history_table(job.history), title="attempts", title_align="left"))
    if job.error:
        parts.append(
            Panel(
                Text(job.error, style="red"), title="error", title_align="left", border_style="red"
            )
        )
    if job.traceback:
        parts.append(
            Panel(
                Text(job.traceback.rstrip("\n")),
                title="traceback of the last failure",
                title_align="left",
                border_style="red",
            )
        )
    return Group(*parts)


def _history_table(history: Sequence[dict[str, Any]]) -> Table:
    """One row per attempt (the newest the job keeps), oldest first."""
    table = Table(box=None, padding=(0, 2), show_edge=False)
    for column in ("attempt", "outcome", "started", "took", "error"):
        table.add_column(column, style="dim" if column in ("started", "took") else "")
    for entry in history:
        started, finished = entry["started_at"], entry["finished_at"]
        took = "-"
        if started is not None and finished is not None:
            took = f"{(finished - started).total_seconds():.3f} s"
        stamp = "-" if started is None else started.astimezone().strftime("%H:%M:%S.%f")[:-3]
        outcome = str(entry["outcome"])
        table.add_row(
            str(entry["attempt"]),
            Text(outcome, style=ATTEMPT_STYLES.get(outcome, "")),
            stamp,
            took,
            snippet(entry["error"]),
        )
    return table


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


# --------------------------------------------------------------------------- recurring


def schedule_dict(schedule: Schedule) -> dict[str, Any]:
    """A schedule as plain JSON values (for --json)."""
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
    table = compact_table()
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
            ago(schedule.last_run),
            Text(snippet(schedule.last_error), style="red"),
        ]
        table.add_row(*cells[: len(columns)])
    if not schedules:
        table.caption = "no recurring schedules"
    return table
