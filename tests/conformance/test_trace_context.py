"""The enqueue's trace context travels with the job on every backend (issue
11, point 6): with `conveyor.tracing.instrument(app)` an enqueue's span context
is stored in `Job.headers`, comes back on every record a worker claims (a
retry's too, and in a bare broker's message), and each run's span is a child
of the enqueue's span, with name, queue, attempt and outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import Conveyor, JobContext, Worker
from conveyor.tracing import instrument

from .helpers import WAIT, eventually


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_each_run_is_a_child_of_its_enqueue(
    app: Conveyor,
    worker: Callable[..., Worker],
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    instrument(app, provider)
    seen: list[tuple[int, dict[str, str]]] = []

    @app.job("flaky", retries=1, backoff=0.05)
    async def flaky(payload: Any, ctx: JobContext) -> None:
        seen.append((ctx.attempt, dict(ctx.job.headers)))
        with provider.get_tracer("test").start_as_current_span("inside the handler"):
            pass
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    with provider.get_tracer("test").start_as_current_span("request") as request:
        job = await app.enqueue("flaky", {"n": 1})
    async with worker(app):
        await eventually(lambda: len(seen) == 2, timeout=WAIT, message="two attempts")
        await eventually(
            lambda: sum(s.name == "conveyor run flaky" for s in exporter.get_finished_spans()) == 2,
            message="both run spans ended",
        )
    finished = exporter.get_finished_spans()
    (enqueue,) = [s for s in finished if s.name == "conveyor enqueue flaky"]
    runs = sorted(
        (s for s in finished if s.name == "conveyor run flaky"),
        key=lambda s: s.attributes["conveyor.job.attempt"],
    )
    assert (
        enqueue.parent is not None and enqueue.parent.span_id == request.get_span_context().span_id
    )
    assert enqueue.kind is trace.SpanKind.PRODUCER
    assert enqueue.attributes["conveyor.job.id"] == job.id
    assert job.headers.get("traceparent", "").split("-")[2] == f"{enqueue.context.span_id:016x}"
    assert [headers for _, headers in seen] == [job.headers, job.headers]  # kept by the backend
    for attempt, run, outcome in ((1, runs[0], "retrying"), (2, runs[1], "completed")):
        assert run.parent is not None and run.parent.span_id == enqueue.context.span_id
        assert run.context.trace_id == enqueue.context.trace_id
        assert run.kind is trace.SpanKind.CONSUMER
        assert dict(run.attributes) == {
            "conveyor.job.id": job.id,
            "conveyor.job.name": "flaky",
            "conveyor.job.queue": "default",
            "conveyor.job.attempt": attempt,
            "conveyor.job.outcome": outcome,
        }
    assert runs[0].status.status_code is trace.StatusCode.ERROR
    assert runs[0].status.description == "RuntimeError: first attempt fails"
    inside = [s for s in finished if s.name == "inside the handler"]
    assert sorted(s.parent.span_id for s in inside if s.parent) == sorted(
        r.context.span_id for r in runs
    )


async def test_without_tracing_jobs_carry_no_headers(
    app: Conveyor, worker: Callable[..., Worker]
) -> None:
    seen: list[dict[str, str]] = []

    @app.job("plain")
    async def plain(payload: Any, ctx: JobContext) -> None:
        seen.append(ctx.job.headers)

    job = await app.enqueue("plain", 1)
    assert job.headers == {}
    async with worker(app):
        await eventually(lambda: seen, message="the run")
    assert seen == [{}]
