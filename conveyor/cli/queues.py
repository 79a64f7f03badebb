"""Commands on queues and workers: `conveyor pause QUEUE`, `conveyor resume
QUEUE` and `conveyor workers`."""

from __future__ import annotations

import dataclasses

import click

from conveyor.cli.core import out, print_json, run
from conveyor.cli.views import workers_table


@click.command()
@click.argument("queue")
@click.pass_context
def pause(ctx: click.Context, queue: str) -> None:
    """Stop workers claiming from QUEUE (within a second).

    Jobs running there finish; enqueues to QUEUE go on, and its jobs wait
    until `conveyor resume QUEUE`."""
    changed = run(ctx, lambda app: app.pause(queue))
    out().print(f"queue {queue} paused" if changed else f"queue {queue} was paused already")


@click.command()
@click.argument("queue")
@click.pass_context
def resume(ctx: click.Context, queue: str) -> None:
    """Let workers claim from QUEUE again (within a second)."""
    changed = run(ctx, lambda app: app.resume(queue))
    out().print(f"queue {queue} resumed" if changed else f"queue {queue} was not paused")


@click.command()
@click.option(
    "--all", "include_stale", is_flag=True, help="Show stale workers too (beats stopped)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def workers(ctx: click.Context, include_stale: bool, as_json: bool) -> None:
    """Live workers: host, pid, queues, jobs running now and the last heartbeat.

    Workers renew their record every 5 s; one whose beats stopped (killed,
    stuck or cut off) is stale: shown with --all for 10 minutes."""
    found = run(ctx, lambda app: app.workers(include_stale=include_stale))
    if as_json:
        print_json([dataclasses.asdict(info) for info in found])
    else:
        out().print(workers_table(found))
