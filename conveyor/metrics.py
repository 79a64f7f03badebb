"""Prometheus metrics (the optional `metrics` extra: prometheus-client).

`conveyor worker APP --metrics-port 9100` serves them from a worker process;
`conveyor.metrics.asgi_app(app)` is an ASGI endpoint for a web app to mount
(FastAPI: `api.mount("/metrics", asgi_app(conveyor))`). Each `Metrics` keeps
its own registry: two apps in one process do not mix their figures.

Where the figures come from:

* Job counters and the duration histogram: the app's lifecycle events
  (conveyor/events.py), which fire in the process whose worker ran the job
  (`duration` is the handler's run time the worker measured).
* Queue depth, oldest waiting job and paused queues: the backend's stats,
  read every `refresh_every` seconds by a task beside the worker, or on each
  scrape of the ASGI endpoint; so every process reports the same queues.
* Slots in use, concurrency, abandoned sync threads and lease recoveries:
  read from the watched workers' own counters on each scrape.

Nothing here is imported by the worker: it is wired in from outside.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.events import Event
from conveyor.job import JobState, NotSupportedError

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from conveyor.app import Conveyor
    from conveyor.worker import Worker

logger = logging.getLogger("conveyor.metrics")

# Handler run times, seconds: from a cache hit to a long report.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
INSTALL_HINT = "metrics need prometheus-client: pip install 'conveyor[metrics]'"

ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], ASGIReceive, ASGISend], Awaitable[None]]


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # the extra is not installed
        raise NotSupportedError(INSTALL_HINT) from exc
    return prometheus_client


class Metrics:
    """The metrics of one app (and of the workers `watch`ed in this process)."""

    def __init__(
        self,
        app: Conveyor,
        *,
        registry: CollectorRegistry | None = None,
        refresh_every: float = 5.0,
    ) -> None:
        pc = _prometheus()
        self.app = app
        self.registry: CollectorRegistry = registry or pc.CollectorRegistry()
        self.refresh_every = refresh_every
        self._workers: list[Worker] = []
        job = ("name", "queue")
        on = self.registry

        def counter(name: str, doc: str) -> Any:
            return pc.Counter(name, doc, job, registry=on)

        self.started = counter("conveyor_jobs_started", "Job attempts started")
        self.completed = counter("conveyor_jobs_completed", "Jobs completed")
        self.failed = counter("conveyor_jobs_failed", "Jobs failed for good (retries exhausted)")
        self.retried = counter("conveyor_jobs_retried", "Failed attempts retried later")
        self.cancelled = counter("conveyor_jobs_cancelled", "Running jobs cancelled")
        self.duration = pc.Histogram(
            "conveyor_job_duration_seconds",
            "Handler run time of each attempt, by its outcome",
            (*job, "outcome"),
            buckets=DURATION_BUCKETS,
            registry=on,
        )
        # Queue figures are a snapshot replaced whole at each refresh, not
        # gauges set label by label: a queue whose jobs are gone, or whose
        # pause was lifted, must stop being reported, not keep its last values.
        self._queues = _QueueCollector()
        self.registry.register(self._queues)
        self.registry.register(_WorkerCollector(self._workers))
        for name, handler in (
            ("job.started", self._on_started),
            ("job.completed", self._on_completed),
            ("job.failed", self._on_failed),
            ("job.retrying", self._on_retrying),
            ("job.cancelled", self._on_cancelled),
        ):
            app.on(name, handler)

    def watch(self, worker: Worker) -> None:
        """Report this worker's slots, abandoned threads and lease recoveries."""
        self._workers.append(worker)

    # ------------------------------------------------------------------ events

    def _on_started(self, event: Event) -> None:
        if event.job is not None:
            self.started.labels(event.job.name, event.job.queue).inc()

    def _ended(self, event: Event, counter: Any, outcome: str) -> None:
        job = event.job
        if job is None:
            return
        counter.labels(job.name, job.queue).inc()
        duration = event.data.get("duration")
        if duration is not None:  # None: failed by lease recovery, not run here
            self.duration.labels(job.name, job.queue, outcome).observe(duration)

    def _on_completed(self, event: Event) -> None:
        self._ended(event, self.completed, "completed")

    def _on_failed(self, event: Event) -> None:
        self._ended(event, self.failed, "failed")

    def _on_retrying(self, event: Event) -> None:
        self._ended(event, self.retried, "retrying")

    def _on_cancelled(self, event: Event) -> None:
        if event.data.get("duration") is not None:  # a running job's cancel, not a pending one's
            self._ended(event, self.cancelled, "cancelled")

    # ------------------------------------------------------------------ queues

    async def refresh(self) -> None:
        """Read queue depths, oldest queued jobs and paused queues from the
        backend (a stats call, and one look-up per queue with jobs queued)."""
        app = self.app
        counts = await app.stats()
        ages: dict[str, float] = {}
        for queue, states in counts.items():
            queued = states.get(JobState.QUEUED.value, 0)
            age = 0.0
            if queued and app.backend.capabilities.list_jobs:
                # Newest first: the last of the queued ones is the oldest.
                oldest = await app.list_jobs(
                    JobState.QUEUED, queue=queue, limit=1, offset=queued - 1
                )
                if oldest and oldest[0].run_at is not None:
                    age = max(0.0, time.time() - oldest[0].run_at.timestamp())
            ages[queue] = age
        try:
            paused = set(await app.paused())
        except NotSupportedError:
            paused = set()
        self._queues.snapshot = _QueueFigures(counts, ages, paused)

    async def keep_refreshed(self) -> None:
        """`refresh()` every `refresh_every` seconds until cancelled; a failed
        read is logged and tried again at the next turn."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                logger.warning("metrics: could not read queue stats (%s)", exc)
            await asyncio.sleep(self.refresh_every)

    def serve(self, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
        """Serve /metrics over HTTP on a thread of its own; returns the stop function."""
        server, thread = _prometheus().start_http_server(port, host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


@dataclass(frozen=True, slots=True)
class _QueueFigures:
    """What one refresh read from the backend."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # queue -> state -> jobs
    oldest_age: dict[str, float] = field(default_factory=dict)  # queue -> seconds
    paused: set[str] = field(default_factory=set)


class _QueueCollector:
    """The queue gauges, from the latest refresh's snapshot. The snapshot is
    swapped in one assignment, so a scrape on the HTTP server's thread sees
    one refresh's figures, never half of two."""

    def __init__(self) -> None:
        self.snapshot = _QueueFigures()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        now = self.snapshot
        jobs = GaugeMetricFamily(
            "conveyor_queue_jobs", "Jobs per queue and state", labels=("queue", "state")
        )
        oldest = GaugeMetricFamily(
            "conveyor_queue_oldest_job_age_seconds",
            "How long the queue's oldest queued job has been due (0: none queued)",
            labels=("queue",),
        )
        paused = GaugeMetricFamily(
            "conveyor_queue_paused", "1 while the queue is paused", labels=("queue",)
        )
        for queue, states in sorted(now.counts.items()):
            for state, count in states.items():
                jobs.add_metric([queue, state], count)
            oldest.add_metric([queue], now.oldest_age.get(queue, 0.0))
        for queue in sorted(set(now.counts) | now.paused):
            paused.add_metric([queue], 1 if queue in now.paused else 0)
        yield from (jobs, oldest, paused)


class _WorkerCollector:
    """Figures read from the watched workers at each scrape."""

    def __init__(self, workers: list[Worker]) -> None:
        self._workers = workers
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._family = GaugeMetricFamily
        self._counter = CounterMetricFamily

    def collect(self) -> Iterator[Any]:
        figures = [(w.settings.concurrency, w.stats()) for w in self._workers]
        for name, doc, value in (
            ("conveyor_worker_slots", "Jobs the workers may run at once", 0),
            ("conveyor_worker_slots_in_use", "Jobs the workers run now", 1),
            (
                "conveyor_worker_abandoned_threads",
                "Threads of sync handlers still busy after their job ended",
                2,
            ),
        ):
            family = self._family(name, doc)
            family.add_metric(
                [],
                sum((c, s["running"], s["abandoned_threads"])[value] for c, s in figures),
            )
            yield family
        recoveries = self._counter(
            "conveyor_lease_recoveries",
            "Jobs whose worker's lease expired, taken back by these workers' recovery",
        )
        recoveries.add_metric([], sum(s["lease_recoveries"] for _, s in figures))
        yield recoveries


def asgi_app(app: Conveyor, metrics: Metrics | None = None) -> ASGIApp:
    """An ASGI endpoint serving the app's metrics; queue figures are read
    from the backend on each scrape. Mount it: `api.mount("/metrics",
    asgi_app(conveyor))`. Pass `metrics` to share one with a worker."""
    metrics = metrics if metrics is not None else Metrics(app)
    inner: ASGIApp = _prometheus().make_asgi_app(registry=metrics.registry)

    async def endpoint(
        scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        if scope["type"] == "http":
            try:
                await metrics.refresh()
            except Exception as exc:  # still serve what is known
                logger.warning("metrics: could not read queue stats (%s)", exc)
        await inner(scope, receive, send)

    return endpoint
