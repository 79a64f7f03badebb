"""conveyor.metrics.asgi_app: an ASGI endpoint (mounted in Starlette) serving
an app's metrics, its queue figures read from the backend at each scrape, its
job figures from the in-process worker's events; two apps in one process keep
their figures apart."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from conveyor import Conveyor, Permanent
from conveyor.metrics import Metrics, asgi_app

pytestmark = pytest.mark.memory


Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient, path: str) -> Figures:
    reply = await client.get(path)
    assert reply.status_code == 200, reply.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def labels(**given: str) -> frozenset[tuple[str, str]]:
    return frozenset(given.items())


async def test_the_endpoint_serves_job_and_queue_figures() -> None:
    app, other = Conveyor("memory://"), Conveyor("memory://")

    @app.job("ok")
    async def ok(payload: int) -> int:
        return payload

    @app.job("bad", retries=0)
    async def bad(payload: int) -> None:
        raise Permanent("no")

    metrics = Metrics(app)
    api = Starlette(
        routes=[Mount("/metrics", asgi_app(app, metrics)), Mount("/other", asgi_app(other))]
    )
    transport = httpx.ASGITransport(app=api)
    async with app, other, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        worker = app.worker(concurrency=2, poll_interval=0.05)
        metrics.watch(worker)
        async with worker:
            jobs = [await app.enqueue("ok", n) for n in range(2)] + [await app.enqueue("bad", 0)]
            for job in jobs:
                await app.wait(job.id, timeout=10)
            figures = await scrape(client, "/metrics/")
            assert figures[("conveyor_worker_slots", labels())] == 2
            await app.enqueue("ok", 9, queue="idle")  # seen at the next scrape, no waiting
            await app.pause("idle")
            again = await scrape(client, "/metrics/")
        other_figures = await scrape(client, "/other/")
    done = labels(name="ok", queue="default")
    assert figures[("conveyor_jobs_completed_total", done)] == 2
    assert figures[("conveyor_jobs_failed_total", labels(name="bad", queue="default"))] == 1
    assert figures[("conveyor_queue_jobs", labels(queue="default", state="completed"))] == 2
    assert ("conveyor_queue_jobs", labels(queue="idle", state="queued")) not in figures
    assert again[("conveyor_queue_jobs", labels(queue="idle", state="queued"))] == 1
    assert again[("conveyor_queue_paused", labels(queue="idle"))] == 1
    assert again[("conveyor_queue_oldest_job_age_seconds", labels(queue="idle"))] >= 0
    # The other app's endpoint has its own registry: none of these figures.
    assert ("conveyor_jobs_completed_total", done) not in other_figures
    assert other_figures[("conveyor_worker_slots", labels())] == 0


def test_a_worker_without_metrics_does_not_import_prometheus() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asyncio\n"
        "from conveyor import Conveyor\n"
        "import conveyor.cli\n"
        "app = Conveyor('memory://')\n"
        "app.job('x')(lambda payload: None)\n"
        "async def main():\n"
        "    async with app.worker():\n"
        "        await app.wait((await app.enqueue('x', 1)).id, timeout=10)\n"
        "asyncio.run(main())\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


async def test_queue_figures_are_what_the_backend_holds_now() -> None:
    """A queue's gauges are read afresh at each scrape: once its jobs are
    gone, or its pause lifted, its old figures are no longer served (an
    alert on the oldest job's age would otherwise fire for ever)."""
    app = Conveyor("memory://")

    @app.job("ok")
    async def ok(payload: int) -> int:
        return payload

    transport = httpx.ASGITransport(app=asgi_app(app))
    async with app, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await app.pause("idle")  # holds no job: shown because it is paused
        job = await app.enqueue("ok", 1, queue="gone")
        before = await scrape(client, "/")
        await app.resume("idle")
        await app.cancel(job.id)
        await app.purge("cancelled")
        after = await scrape(client, "/")
    assert before[("conveyor_queue_paused", labels(queue="idle"))] == 1
    assert before[("conveyor_queue_jobs", labels(queue="gone", state="queued"))] == 1
    assert ("conveyor_queue_oldest_job_age_seconds", labels(queue="gone")) in before
    stale = [key for key in after if key[0].startswith("conveyor_queue_")]
    assert stale == []
