"""OpenTelemetry across processes: the test process enqueues under a span
(SDK, in-memory exporter); a real worker process, instrumented with its own
SDK provider, writes its spans to a file; each run span read back from it is
a child of the enqueue span, in the same trace."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import Conveyor, JobState
from conveyor.tracing import instrument

from .helpers import WAIT, WorkerProcess, eventually

pytestmark = pytest.mark.slow

APP = """
import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from conveyor import Conveyor, JobContext
from conveyor.tracing import instrument


class FileExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(os.environ["SPANS_FILE"], "a") as out:
            for span in spans:
                out.write(span.to_json(indent=None) + "\\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
app = Conveyor()  # CONVEYOR_URL
instrument(app, provider)


@app.job("traced", retries=1, backoff=0.05)
async def traced(payload: int, ctx: JobContext) -> int:
    with provider.get_tracer("app").start_as_current_span("handler work"):
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
    return ctx.attempt
"""


def test_a_run_in_a_worker_process_is_a_child_of_the_enqueue(tmp_path: Path, db_url: str) -> None:
    (tmp_path / "tracedapp.py").write_text(APP)
    spans_file = tmp_path / "spans.jsonl"
    worker = WorkerProcess(
        tmp_path, db_url, ["tracedapp:app"], "worker", {"SPANS_FILE": str(spans_file)}
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    producer = Conveyor(db_url)
    producer.declare("traced", retries=1)
    instrument(producer, provider)
    try:
        with provider.get_tracer("test").start_as_current_span("web request"):
            job = producer.enqueue_sync("traced", 1)
        assert producer.wait_sync(job.id, timeout=WAIT).state is JobState.COMPLETED

        def worker_spans() -> list[dict] | None:
            if not spans_file.exists():
                return None
            found = [json.loads(line) for line in spans_file.read_text().splitlines()]
            runs = [s for s in found if s["name"] == "conveyor run traced"]
            return found if len(runs) == 2 else None

        written = eventually(worker_spans, "the worker's two run spans")
    finally:
        producer.close_sync()
        worker.signal(signal.SIGTERM)
        worker.wait()
        worker.close()
    (enqueue,) = [s for s in exporter.get_finished_spans() if s.name == "conveyor enqueue traced"]
    trace_id = f"0x{enqueue.context.trace_id:032x}"
    enqueue_id = f"0x{enqueue.context.span_id:016x}"
    runs = sorted(
        (s for s in written if s["name"] == "conveyor run traced"),
        key=lambda s: s["attributes"]["conveyor.job.attempt"],
    )
    for attempt, run, outcome in ((1, runs[0], "retrying"), (2, runs[1], "completed")):
        assert run["context"]["trace_id"] == trace_id
        assert run["parent_id"] == enqueue_id
        assert run["kind"] == "SpanKind.CONSUMER"
        assert run["attributes"] == {
            "conveyor.job.id": job.id,
            "conveyor.job.name": "traced",
            "conveyor.job.queue": "default",
            "conveyor.job.attempt": attempt,
            "conveyor.job.outcome": outcome,
        }
    assert runs[0]["status"]["status_code"] == "ERROR"
    work = [s for s in written if s["name"] == "handler work"]
    assert sorted(s["parent_id"] for s in work) == sorted(r["context"]["span_id"] for r in runs)
