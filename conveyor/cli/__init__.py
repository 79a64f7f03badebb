"""The `conveyor` command line: run workers, inspect and administer queues.

The package is laid out by concern: `core` (one-line errors, the group class,
global options, running an action on the app), `loading` (finding MODULE:APP),
`views` (tables and panels), and one module per family of commands:
`worker_command`, `admin` (stats, jobs, cancel, retry, purge, recurring),
`queues` (pause, resume, workers) and `tools` (bench, demo). This module
builds the `cli` group from them.
"""

from __future__ import annotations

import click

from conveyor import __version__
from conveyor.app import DEFAULT_URL
from conveyor.cli import (
    admin,
    dashboard_command,
    job_types,
    migrate,
    queues,
    tools,
    worker_command,
)
from conveyor.cli.core import CliError, ConveyorGroup, Options, describe
from conveyor.cli.loading import load_app
from conveyor.settings import CONVEYOR_DEBUG, CONVEYOR_URL

__all__ = ["CliError", "cli", "describe", "load_app", "main"]


@click.group(
    cls=ConveyorGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--url",
    envvar=CONVEYOR_URL,
    show_envvar=True,
    metavar="URL",
    help=f"Backend URL, e.g. sqlite:///jobs.db or memory:// [default: {DEFAULT_URL}].",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar=CONVEYOR_DEBUG,
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


cli.add_command(worker_command.worker)
cli.add_command(admin.stats)
cli.add_command(admin.jobs)
admin.jobs.add_command(job_types.types)
cli.add_command(admin.cancel)
cli.add_command(admin.retry)
cli.add_command(admin.purge)
cli.add_command(admin.recurring)
cli.add_command(queues.pause)
cli.add_command(queues.resume)
cli.add_command(queues.workers)
cli.add_command(migrate.migrate)
cli.add_command(dashboard_command.dashboard)
cli.add_command(tools.bench)
cli.add_command(tools.demo)


def main() -> None:
    """The `conveyor` console script."""
    cli.main(prog_name="conveyor")
