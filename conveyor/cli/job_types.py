"""`conveyor jobs types MODULE:APP [--discover PKG]`: what an app registers,
and the `--discover` option it shares with `conveyor worker`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.cli.core import out, print_json
from conveyor.cli.loading import load_app
from conveyor.cli.views import compact_table
from conveyor.durations import describe_seconds
from conveyor.registry import JobType

FC = TypeVar("FC", bound=Callable[..., Any])


def discover_option(command: FC) -> FC:
    """`--discover PKG`, repeatable or comma-separated."""
    return click.option(
        "--discover",
        "discover",
        multiple=True,
        metavar="PKG",
        help="Import every module of this package (recursively) so their handlers register; "
        "repeat it or separate packages with commas.",
    )(command)


def discover_packages(app: Conveyor, given: Iterable[str]) -> list[str]:
    """Run `app.discover` on the packages of the `--discover` options; the
    modules imported. A module that fails is one error line naming it
    (DiscoveryError; --debug shows the original traceback)."""
    packages = [p.strip() for option in given for p in option.split(",") if p.strip()]
    return app.discover(*packages) if packages else []


def describe_type(app: Conveyor, job_type: JobType[Any, Any]) -> dict[str, Any]:
    schedule = app.function_schedules.get(job_type.name)
    spec = None
    if schedule is not None:
        spec = (
            f"{schedule.cron} ({schedule.tz})"
            if schedule.cron is not None
            else f"every {describe_seconds(schedule.every or 0)}"
        )
    return {
        "name": job_type.name,
        "queue": job_type.defaults.queue,
        "retries": job_type.defaults.retries,
        "timeout": job_type.defaults.timeout,
        "priority": job_type.defaults.priority,
        "version": job_type.version,
        "handler": job_type.handler is not None,
        "schedule": spec,
    }


def types_table(rows: list[dict[str, Any]]) -> Table:
    table = compact_table()
    for column in ("name", "queue", "retries", "timeout", "version", "handler", "schedule"):
        right = column in ("retries", "timeout", "version")
        table.add_column(column, no_wrap=True, justify="right" if right else "left")
    for row in rows:
        timeout = row["timeout"]
        table.add_row(
            row["name"],
            row["queue"],
            str(row["retries"]),
            "none" if timeout is None else f"{timeout:g} s",
            str(row["version"]),
            "yes" if row["handler"] else "declared",
            row["schedule"] or "",
        )
    if not rows:
        table.caption = "no job types registered (import their modules, or use --discover)"
    return table


@click.command("types")
@click.argument("app_path", metavar="MODULE:APP")
@discover_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def types(app_path: str, discover: tuple[str, ...], as_json: bool) -> None:
    """List the job types the app at MODULE:APP registers (after --discover):
    queue, retries, timeout, version, and the schedule of @app.cron /
    @app.every functions. Reads no backend."""
    app = load_app(app_path)
    discover_packages(app, discover)
    rows = [describe_type(app, app.registry[name]) for name in sorted(app.registry)]
    if as_json:
        print_json(rows)
    else:
        out().print(types_table(rows))
