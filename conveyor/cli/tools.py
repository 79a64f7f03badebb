"""Tools around the queue rather than on it: `bench` and `demo`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from conveyor.cli.core import CliError, describe, out
from conveyor.settings import CONVEYOR_BENCH_REDIS_URL, CONVEYOR_URL


@click.command()
@click.option(
    "-b",
    "--backends",
    default="memory,sqlite",
    show_default=True,
    metavar="A,B",
    help=f"Backends to measure: memory, sqlite, redis (at ${CONVEYOR_BENCH_REDIS_URL}, "
    "else the local default port) or full URLs, comma-separated.",
)
@click.option(
    "-n",
    "--jobs",
    "job_count",
    type=click.IntRange(min=1),
    metavar="N",
    default=2000,
    show_default=True,
    help="No-op jobs enqueued and drained per backend.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=20,
    show_default=True,
    help="Jobs the draining worker runs at once.",
)
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


@click.command()
@click.option(
    "-n",
    "--jobs",
    "job_count",
    type=click.IntRange(min=4),
    metavar="N",
    default=300,
    show_default=True,
    help="Example jobs to enqueue, of mixed types, in one batch.",
)
@click.option(
    "--url",
    "demo_url",
    metavar="URL",
    help="Where the demo keeps its jobs [default: a fresh sqlite:///conveyor-demo.db, "
    f"removed at start]. The global --url and {CONVEYOR_URL} do not apply.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=8,
    show_default=True,
    help="Jobs the demo's worker runs at once.",
)
def demo(job_count: int, demo_url: str | None, concurrency: int) -> None:
    """Run a few hundred example jobs with live progress bars (about 10 s).

    Fast, flaky, progress-reporting and slow sync jobs, run by an in-process
    worker; ends with a summary per job type."""
    from conveyor.demo import run_demo

    run_demo(job_count, demo_url, concurrency, out())
