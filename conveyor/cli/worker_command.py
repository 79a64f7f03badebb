"""`conveyor worker MODULE:APP`: run a worker until SIGTERM/SIGINT, or with
`--burst` until the queues it serves have nothing due."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from conveyor import __version__
from conveyor.app import Conveyor
from conveyor.cli.core import CliError, options
from conveyor.cli.job_types import discover_option, discover_packages
from conveyor.cli.loading import load_app_with_url
from conveyor.logs import LOG_FORMATS, JsonFormatter, LineHandler, PlainFormatter, log_format
from conveyor.settings import (
    CONVEYOR_BURST,
    CONVEYOR_CONCURRENCY,
    CONVEYOR_HEARTBEAT_INTERVAL,
    CONVEYOR_LEASE,
    CONVEYOR_LOG_FORMAT,
    CONVEYOR_MAX_ABANDONED_THREADS,
    CONVEYOR_MAX_STALLED,
    CONVEYOR_METRICS_PORT,
    CONVEYOR_POLL_INTERVAL,
    CONVEYOR_PREFETCH,
    CONVEYOR_QUEUES,
    CONVEYOR_RECOVER_INTERVAL,
    CONVEYOR_SCHEDULER,
    CONVEYOR_SHUTDOWN_TIMEOUT,
    split_queues,
)
from conveyor.worker import Worker

if TYPE_CHECKING:
    from conveyor.metrics import Metrics

logger = logging.getLogger("conveyor.cli")

# Worker threads that run sync handlers are named after this prefix (see
# Worker.start); the worker command checks them after shutdown.
_JOB_THREAD_PREFIX = "conveyor-job"


@click.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    help=f"Jobs run at once [env {CONVEYOR_CONCURRENCY}; default 10].",
)
@click.option(
    "-q",
    "--queues",
    metavar="A,B",
    help=f"Queues to serve [env {CONVEYOR_QUEUES}; default: every queue the app's job types use].",
)
@click.option(
    "--scheduler/--no-scheduler",
    default=None,
    help=f"Fire recurring schedules in this worker [env {CONVEYOR_SCHEDULER}; default on].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    metavar="S",
    help="Seconds running jobs get to finish after SIGTERM "
    f"[env {CONVEYOR_SHUTDOWN_TIMEOUT}; default 30].",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    metavar="N",
    help=f"Jobs claimed ahead of free slots [env {CONVEYOR_PREFETCH}; default 0].",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Seconds a claim lasts without a heartbeat before another worker may take "
    f"the job [env {CONVEYOR_LEASE}; default 30].",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help=f"Seconds between heartbeats [env {CONVEYOR_HEARTBEAT_INTERVAL}; "
    "default min(lease/3, 1)].",
)
@click.option(
    "--recover-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help=f"Seconds between looks for expired leases [env {CONVEYOR_RECOVER_INTERVAL}; "
    "default min(lease/2, 5)].",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Longest idle wait between claims; on SQS the long poll, in whole seconds up to "
    f"20 and at most half the lease [env {CONVEYOR_POLL_INTERVAL}; default 1].",
)
@click.option(
    "--max-stalled",
    type=click.IntRange(min=0),
    metavar="N",
    help=f"Lease expiries a job survives before it fails [env {CONVEYOR_MAX_STALLED}; default 1].",
)
@click.option(
    "--max-abandoned-threads",
    type=click.IntRange(min=0),
    metavar="N",
    help="Threads of sync handlers that ran past their timeout tolerated before they "
    f"take slots [env {CONVEYOR_MAX_ABANDONED_THREADS}; default: the concurrency].",
)
@click.option(
    "--burst",
    is_flag=True,
    default=None,
    help="Exit (status 0) once the queues served have nothing due and nothing runs here; "
    f"schedules due at start fire once [env {CONVEYOR_BURST}; default off].",
)
@discover_option
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Show log lines of this level and above.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    envvar=CONVEYOR_LOG_FORMAT,
    help="text, or json: one JSON object per line, with job id, name, queue, attempt and "
    f"duration on job lines [env {CONVEYOR_LOG_FORMAT}; default text].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    envvar=CONVEYOR_METRICS_PORT,
    metavar="N",
    help="Serve Prometheus metrics on this port at /metrics (needs the metrics extra) "
    f"[env {CONVEYOR_METRICS_PORT}; default: none].",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="The address the metrics server listens on (0.0.0.0: every interface).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app_path: str,
    concurrency: int | None,
    queues: str | None,
    scheduler: bool | None,
    shutdown_timeout: float | None,
    prefetch: int | None,
    lease: float | None,
    heartbeat_interval: float | None,
    recover_interval: float | None,
    poll_interval: float | None,
    max_stalled: int | None,
    max_abandoned_threads: int | None,
    burst: bool | None,
    discover: tuple[str, ...],
    log_level: str,
    log_format: str | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker for the Conveyor app at MODULE:APP until SIGTERM/SIGINT
    (with --burst: until nothing is due).

    MODULE is imported with the current directory on sys.path (like uvicorn);
    with MODULE alone, its `app` attribute (or its only Conveyor) is used.
    Flags win over the environment, which wins over the defaults.
    """
    app = load_app_with_url(app_path, options(ctx).url)
    discovered = discover_packages(app, discover)
    settings: dict[str, Any] = {
        "concurrency": concurrency,
        # None (not given) lets the environment apply.
        "queues": _split_queues(queues) if queues is not None else None,
        "scheduler": scheduler,
        "shutdown_timeout": shutdown_timeout,
        "prefetch": prefetch,
        "lease": lease,
        "heartbeat_interval": heartbeat_interval,
        "recover_interval": recover_interval,
        "poll_interval": poll_interval,
        "max_stalled": max_stalled,
        "max_abandoned_threads": max_abandoned_threads,
        "burst": burst,
    }
    the_worker = app.worker(**settings)
    _configure_logging(log_level, log_format)
    if discovered:
        logger.info("discovered %d module(s): %s", len(discovered), ", ".join(discovered))
    metrics = None
    if metrics_port is not None:
        from conveyor.metrics import Metrics

        metrics = Metrics(app)
        metrics.watch(the_worker)
    logger.info(
        "conveyor %s: worker for %s, job types: %s; queues: %s",
        __version__,
        app_path,
        ", ".join(sorted(the_worker.names)) or "none with a handler",
        ", ".join(the_worker.queues),
    )
    asyncio.run(_serve(app, the_worker, metrics, metrics_port, metrics_host))
    _exit_if_job_threads_stuck()


async def _serve(
    app: Conveyor,
    the_worker: Worker,
    metrics: Metrics | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
) -> None:
    stop_serving: Callable[[], None] | None = None
    refresher: asyncio.Task[None] | None = None
    try:
        if metrics is not None and port is not None:
            try:
                stop_serving = metrics.serve(port, host)
            except OSError as exc:
                raise CliError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
            logger.info("metrics at http://%s:%d/metrics", host, port)
            refresher = asyncio.create_task(metrics.keep_refreshed(), name="conveyor-metrics")
        await the_worker.run()
    finally:
        if refresher is not None:
            refresher.cancel()
        if stop_serving is not None:
            stop_serving()
        # Closing lets the backend finish queued writes and release its
        # connection and thread before asyncio.run tears the loop down.
        await app.close()


def _split_queues(raw: str) -> tuple[str, ...]:
    try:
        return split_queues(raw)
    except ValueError:
        raise CliError(f"--queues needs at least one queue name, got {raw!r}") from None


def _configure_logging(level: str, fmt: str | None = None) -> None:
    handler: logging.Handler
    if log_format(fmt) == "json":
        handler = LineHandler()
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False, log_time_format="[%X]")
        # RichHandler prints time and level itself; without a formatter of its
        # own basicConfig would give it one that repeats the level.
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        # Files and log collectors want one greppable line per record.
        handler = LineHandler()
        handler.setFormatter(PlainFormatter())
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
