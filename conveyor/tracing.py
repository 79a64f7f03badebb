"""OpenTelemetry traces (the optional `otel` extra: opentelemetry-api).

`conveyor.tracing.instrument(app)` makes the app trace its enqueues and the
runs of the workers made from it afterwards:

* an enqueue makes one PRODUCER span per job ("conveyor enqueue NAME"), a
  child of whatever span is current (a web request's), and writes its
  context (W3C `traceparent`, `tracestate`, by the global propagator) into
  the job's `headers`, which every backend stores with the job and returns
  on every record (a bare SQS or Pub/Sub message carries them in its body);
* a run makes one CONSUMER span per attempt ("conveyor run NAME") whose
  parent is that context, read back from the job in whichever process runs
  it; it is current while an async handler runs, so the handler's own spans
  nest under it.

Attributes on both: `conveyor.job.id`, `conveyor.job.name`,
`conveyor.job.queue`; on runs also `conveyor.job.attempt` and
`conveyor.job.outcome` (completed, failed, retrying, cancelled, handed back;
"lost" when the worker's lease was lost). A failed attempt's span has status
ERROR with the job's error as description.

Spans go wherever the application's tracer provider sends them (the SDK and
an exporter are the application's to configure, before `instrument`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import NewJob, Outcome, OutcomeKind, attempt_outcome
from conveyor.job import Job, NotSupportedError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

INSTALL_HINT = "tracing needs opentelemetry-api: pip install 'conveyor[otel]'"


def instrument(app: Conveyor, tracer_provider: Any = None) -> Tracing:
    """Trace `app`'s enqueues and its workers' runs (workers made from now on)
    with `tracer_provider` (None: the global one). Returns the tracer."""
    tracing = Tracing(tracer_provider)
    app.tracing = tracing
    return tracing


class Tracing:
    """`JobTracer` (conveyor/observers.py) over OpenTelemetry."""

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError as exc:
            raise NotSupportedError(INSTALL_HINT) from exc
        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._tracer = trace.get_tracer("conveyor", tracer_provider=tracer_provider)

    @contextlib.contextmanager
    def enqueue(self, jobs: Sequence[NewJob]) -> Iterator[None]:
        trace = self._trace
        spans = []
        for new in jobs:
            span = self._tracer.start_span(
                f"conveyor enqueue {new.name}",
                kind=trace.SpanKind.PRODUCER,
                attributes=_attributes(new.id, new.name, new.queue),
            )
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier, context=trace.set_span_in_context(span))
            new.headers = json.dumps(carrier) if carrier else None
            spans.append(span)
        try:
            yield
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            raise
        finally:
            for span in spans:
                span.end()

    def run(self, job: Job) -> _RunSpan:
        trace = self._trace
        parent = self._propagate.extract(job.headers) if job.headers else None
        attributes = _attributes(job.id, job.name, job.queue)
        attributes["conveyor.job.attempt"] = job.attempts
        span = self._tracer.start_span(
            f"conveyor run {job.name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        )
        token = self._context.attach(trace.set_span_in_context(span))
        return _RunSpan(self, span, token)


class _RunSpan:
    def __init__(self, tracing: Tracing, span: Any, token: Any) -> None:
        self._tracing = tracing
        self._span = span
        self._token = token

    def end(self, outcome: Outcome | None) -> None:
        trace = self._tracing._trace
        span = self._span
        if outcome is None:
            span.set_attribute("conveyor.job.outcome", "lost")
        else:
            name = attempt_outcome(outcome.kind, timed_out=outcome.timed_out).value
            span.set_attribute("conveyor.job.outcome", name)
            if outcome.kind in (OutcomeKind.FAILED, OutcomeKind.SCHEDULED):
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error or name))
        self._tracing._context.detach(self._token)
        span.end()


def _attributes(job_id: str, name: str, queue: str) -> dict[str, Any]:
    return {"conveyor.job.id": job_id, "conveyor.job.name": name, "conveyor.job.queue": queue}
