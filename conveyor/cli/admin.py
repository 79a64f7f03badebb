"""Inspecting and administering queues: stats, jobs ls/show, cancel, retry,
purge and recurring."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from conveyor.app import Conveyor
from conveyor.backends.optional import BrokerStats, DeadLetterRedrive
from conveyor.backends.url_options import without_secrets
from conveyor.cli.core import (
    CliError,
    ConveyorGroup,
    admin_app,
    confirm,
    duration_option,
    out,
    parse_state,
    print_json,
    run,
    run_on,
)
from conveyor.cli.views import (
    broker_table,
    job_view,
    jobs_table,
    paused_line,
    recurring_table,
    schedule_dict,
    serving_lines,
    stats_table,
)
from conveyor.durations import describe_seconds
from conveyor.job import Job, JobState, NotSupportedError
from conveyor.options import MAX_LISTING

# --------------------------------------------------------------------------- stats


@click.command()
@click.option("-w", "--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def stats(ctx: click.Context, watch: bool, as_json: bool) -> None:
    """Counts of jobs per queue and state."""
    if watch and as_json:
        raise CliError("--watch and --json do not go together")
    if not watch:
        app = admin_app(ctx)
        if as_json:
            print_json(run_on(app, lambda app: app.stats()))
        else:
            out().print(run_on(app, _stats_view))
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how --watch ends
        run(ctx, _watch_stats)


async def _watch_stats(app: Conveyor) -> None:
    def render(view: RenderableType) -> RenderableType:
        stamp = Text(
            f"{datetime.now():%H:%M:%S} · refreshing every 1 s · Ctrl-C to stop", style="dim"
        )
        return Group(view, stamp)

    with Live(render(await _stats_view(app)), console=out(), auto_refresh=False) as live:
        while True:
            await asyncio.sleep(1.0)
            live.update(render(await _stats_view(app)), refresh=True)


async def _stats_view(app: Conveyor) -> RenderableType:
    """The counts table (paused queues marked), then who serves which queues
    and what no live worker can run."""
    try:
        paused = await app.paused()
    except NotSupportedError:  # a bare broker: nothing is ever paused
        paused = []
    table: RenderableType = stats_table(await app.stats(), app.url, paused)
    if paused:
        table = Group(table, paused_line(paused))
    backend = app.backend
    if isinstance(backend, BrokerStats) and (rows := await backend.broker_stats()):
        # A broker without counts (Pub/Sub) has no rows.
        table = Group(table, broker_table(rows))
    try:
        workers, unserved = await app.workers(), await app.unserved()
    except NotSupportedError:
        return table
    return Group(table, serving_lines(workers, unserved))


# --------------------------------------------------------------------------- jobs


@click.group(cls=ConveyorGroup)
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
@click.option(
    "-l",
    "--limit",
    type=click.IntRange(min=1, max=MAX_LISTING),
    default=50,
    show_default=True,
    help="Show at most this many jobs.",
)
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
    wanted = parse_state(state) if state is not None else None
    found = run(ctx, lambda app: app.list_jobs(state=wanted, name=name, queue=queue, limit=limit))
    if as_json:
        print_json([job.to_dict() for job in found])
        return
    console = out()
    console.print(jobs_table(found, limit, console.width))


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of panels.")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Everything about one job: fields, payload, result, log lines, error."""
    job = run(ctx, lambda app: app.get_job(job_id))
    if job is None:
        raise CliError(f"no job with id {job_id!r}")
    if as_json:
        print_json(job.to_dict())
        return
    out().print(job_view(job))


# --------------------------------------------------------------------------- cancel / retry


@click.command()
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
    message = run(ctx, lambda app: _cancel(app, job_id, name, key))
    out().print(message)


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


@click.command()
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
        job = run(ctx, lambda app: _retry_one(app, job_id))
        out().print(Text(f"queued job {job.id} ({job.name}) again", style="green"))
        return
    count = run(ctx, lambda app: _retry_all_failed(app, queue, name))
    style = "green" if count else "dim"
    out().print(Text(f"queued {count} failed job(s) again", style=style))


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
    backend = app.backend
    if not backend.capabilities.list_jobs and isinstance(backend, DeadLetterRedrive):
        # A broker without a store: its failed set is the dead-letter queue.
        if name is not None:
            raise CliError("--name needs a store: dead-letter messages are moved back unread")
        await app.open()
        return await backend.redrive(queue)
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


@click.command()
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
    callback=duration_option,
    metavar="AGE",
    help="Only jobs older than AGE, e.g. 30s, 10m, 1h30m, 7d.",
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
    parsed = [parse_state(s) for s in states]
    if JobState.RUNNING in parsed:
        raise CliError("running jobs cannot be purged; cancel them first")
    app = admin_app(ctx)  # before the prompt: a bad URL fails without asking first
    if not yes:
        what = "/".join(s.value for s in parsed)
        age = f" older than {describe_seconds(older_than)}" if older_than is not None else ""
        where = f"queue {queue!r}" if queue else "all queues"
        confirm(
            f"Delete {what} jobs{age} from {where} of {without_secrets(app.url)}?",
            "nothing was purged",
        )
    removed = run_on(app, lambda app: app.purge(parsed, older_than=older_than, queue=queue))
    out().print(Text(f"purged {removed} job(s)", style="green" if removed else "dim"))


# --------------------------------------------------------------------------- recurring


@click.group(cls=ConveyorGroup)
def recurring() -> None:
    """List, enable, disable or delete recurring schedules.

    Schedules are created in code with `app.recurring(...)`; a worker with the
    scheduler on fires them."""


@recurring.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def recurring_ls(ctx: click.Context, as_json: bool) -> None:
    """List every recurring schedule."""
    schedules = run(ctx, lambda app: app.list_recurring())
    if as_json:
        print_json([schedule_dict(s) for s in schedules])
        return
    out().print(recurring_table(schedules))


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
        confirm(f"Delete the recurring schedule {name!r}?", "nothing was deleted")
    _switch_schedule(ctx, name, "deleted", lambda app: app.delete_recurring(name))


def _switch_schedule(
    ctx: click.Context, name: str, done: str, action: Callable[[Conveyor], Awaitable[bool]]
) -> None:
    if not run(ctx, action):
        raise CliError(f"no recurring schedule named {name!r}")
    out().print(Text(f"{done} recurring schedule {name!r}", style="green"))
