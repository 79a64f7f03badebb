"""A worker writes its lines per job a batch at a time (`job_lines.HeldLines`):
the "started" lines of the jobs a claim brought before any of them runs, the
"completed" lines of one loop step together at the next. Each line is the
one logging would write at the moment the job started or ended; one write
per batch; a stream that cannot take one line loses that line only; where
logging is configured so that a record is needed, each held line becomes
the record logging would have made then."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.job import Job, JobState
from conveyor.job_lines import HeldLines
from conveyor.logs import LineHandler, PlainFormatter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, CountingStream]]:
    """conveyor's text handler alone on a logger of its own."""
    stream = CountingStream()
    handler = LineHandler(stream)
    handler.setFormatter(PlainFormatter())
    logger = logging.getLogger("conveyor.test_held_lines")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers[:] = [handler]
    try:
        yield logger, stream
    finally:
        logger.handlers[:] = []
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def ours_only(logger: logging.Logger) -> None:
    """Take pytest's capture handlers off (it adds them to every
    non-propagating logger as each test starts): with them, every line would
    be a record, and the path without one would go untested."""
    logger.handlers[:] = [h for h in logger.handlers if type(h) is LineHandler]


def ready(
    lines: tuple[logging.Logger, CountingStream],
) -> tuple[logging.Logger, CountingStream, HeldLines]:
    logger, stream = lines
    ours_only(logger)
    return logger, stream, HeldLines()


def a_job(n: int) -> Job:
    return Job(id=f"j{n}", name="mail", queue="default", payload={}, state=JobState.RUNNING)


def clock_at(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    """Both clocks (3.13's records read time_ns) at `ns` nanoseconds."""
    monkeypatch.setattr(time, "time", lambda: ns / 10**9)
    monkeypatch.setattr(time, "time_ns", lambda: ns)


def held_at(
    monkeypatch: pytest.MonkeyPatch, held: HeldLines, logger: logging.Logger, ns: int
) -> logging.LogRecord:
    """Hold job j1's line with the clocks at `ns`; the record logging makes then."""
    clock_at(monkeypatch, ns)
    hold(held, logger, 1)
    return stock_record()


def stock_record() -> logging.LogRecord:
    """A record logging makes now (its created and msecs, on this interpreter)."""
    return logging.LogRecord("x", logging.INFO, __file__, 1, "", (), None)


def hold(held: HeldLines, logger: logging.Logger, n: int) -> None:
    job = a_job(n)
    held.hold(logger, job, "started", "processing job %s %s (attempt %d)", job.name, job.id, 1)


def test_a_batch_is_one_write_of_the_lines_logging_writes(
    lines: tuple[logging.Logger, CountingStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream, held = ready(lines)
    clock_at(monkeypatch, 1_700_000_000_250_000_000)
    for n in range(3):
        hold(held, logger, n)
    assert stream.writes == 0 and len(held) == 3
    held.write()
    assert stream.writes == 1 and len(held) == 0
    logger.info("processing job %s %s (attempt %d)", "mail", "j0", 1)  # the stock line
    *quick, stock = stream.getvalue().splitlines()
    assert quick[0] == stock
    assert [line.rsplit(" ", 3)[1] for line in quick] == ["j0", "j1", "j2"]


def test_each_line_keeps_the_time_it_was_made(
    lines: tuple[logging.Logger, CountingStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream, held = ready(lines)
    then = held_at(monkeypatch, held, logger, 1_700_000_000_250_000_000)
    clock_at(monkeypatch, 1_700_000_007_500_000_000)
    held.write()
    expected = PlainFormatter().time_text(then.created, then.msecs)
    assert stream.getvalue().startswith(expected + " INFO ")


async def test_lines_held_for_soon_are_written_at_the_next_loop_step(
    lines: tuple[logging.Logger, CountingStream],
) -> None:
    logger, stream, held = ready(lines)
    loop = asyncio.get_running_loop()
    hold(held, logger, 1)
    held.write_soon(loop)
    hold(held, logger, 2)
    held.write_soon(loop)  # one write for both
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    assert stream.writes == 1 and stream.getvalue().count("\n") == 2
    held.write()  # nothing left: nothing written
    assert stream.writes == 1


def test_a_handler_added_before_the_write_gets_the_records_of_the_held_lines(
    lines: tuple[logging.Logger, CountingStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream, held = ready(lines)
    then = held_at(monkeypatch, held, logger, 1_700_000_000_250_000_000)
    seen: list[logging.LogRecord] = []

    class Keeping(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keeping())
    clock_at(monkeypatch, 1_700_000_009_000_000_000)
    held.write()
    (record,) = seen
    assert record.getMessage() == "processing job mail j1 (attempt 1)"
    assert (record.created, record.msecs) == (then.created, then.msecs)
    assert record.relativeCreated == then.relativeCreated and record.__dict__["event"] == "started"
    assert record.funcName == "hold" and record.pathname == __file__
    assert stream.getvalue().endswith("processing job mail j1 (attempt 1)\n")


def test_a_line_the_stream_cannot_take_loses_that_line_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    handler = LineHandler(stream)
    handler.setFormatter(PlainFormatter())
    failed: list[str] = []
    monkeypatch.setattr(handler, "handleError", lambda record: failed.append(record.getMessage()))
    logger = logging.getLogger("conveyor.test_held_lines_ascii")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers[:] = [handler]
    held = HeldLines()
    try:
        for name in ("plain", "caf\u00e9", "also plain"):
            held.hold(logger, a_job(1), "started", "job %s", name)
        assert logger.handlers == [handler]  # no capture handler: no records
        held.write()
    finally:
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    written = raw.getvalue().decode().splitlines()
    assert [line.split(": ", 1)[1] for line in written] == ["job plain", "job also plain"]
    assert failed == ["job caf\u00e9"]


async def test_a_worker_writes_a_jobs_started_line_before_the_job_runs_and_all_by_its_stop(
    lines: tuple[logging.Logger, CountingStream],
) -> None:
    """Each handler finds its own "started" line written already; once the
    worker stopped, every "completed" line is written, before its last line."""
    _, stream = lines
    restore = worker_lines_to(stream)
    ours_only(logging.getLogger("conveyor.worker"))
    app = Conveyor("memory://")
    seen_at_start: dict[str, bool] = {}

    @app.job("probe")
    async def probe(payload: Any) -> None:
        job_id = payload["n"]
        seen_at_start[job_id] = f"processing job probe {ids[job_id]} " in stream.getvalue()

    try:
        async with app:
            ids = {}
            for n in range(12):
                job = await app.enqueue("probe", {"n": str(n)})
                ids[str(n)] = job.id
            async with app.worker(concurrency=5, scheduler=False):
                for job_id in ids.values():
                    await app.wait(job_id, timeout=10)
    finally:
        restore()
    assert seen_at_start == {str(n): True for n in range(12)}
    text = stream.getvalue()
    last = text.rindex(" stopped: ")
    for job_id in ids.values():
        assert -1 < text.index(f"job probe {job_id} completed in ") < last
    # Batches: fewer writes than lines (two per job, the worker's own lines).
    assert stream.writes < text.count("\n")


def worker_lines_to(stream: io.StringIO | None, handler: logging.Handler | None = None) -> Any:
    """conveyor.worker's handlers replaced by `handler` (default: conveyor's
    text handler on `stream`) for a test; restored by the returned callable."""
    worker_logger = logging.getLogger("conveyor.worker")
    if handler is None:
        handler = LineHandler(stream)
        handler.setFormatter(PlainFormatter())
    saved = (worker_logger.handlers[:], worker_logger.level, worker_logger.propagate)
    worker_logger.handlers[:] = [handler]
    worker_logger.setLevel(logging.INFO)
    worker_logger.propagate = False

    def restore() -> None:
        worker_logger.handlers[:], worker_logger.level, worker_logger.propagate = saved

    return restore


async def test_with_one_slot_a_job_is_shown_completed_before_the_next_is_shown_started() -> None:
    """The next job (from the prefetched backlog) starts as the previous one
    ends: its "started" line must not come before the other's "completed"."""
    stream = io.StringIO()
    restore = worker_lines_to(stream)
    ours_only(logging.getLogger("conveyor.worker"))
    app = Conveyor("memory://")

    @app.job("probe")
    async def probe(payload: Any) -> None:
        await asyncio.sleep(0.01)

    try:
        async with app:
            ids = [(await app.enqueue("probe", {})).id for _ in range(3)]
            async with app.worker(concurrency=1, prefetch=2, scheduler=False):
                for job_id in ids:
                    await app.wait(job_id, timeout=10)
    finally:
        restore()
    text = stream.getvalue()
    for earlier, later in itertools.pairwise(ids):
        assert text.index(f"job probe {earlier} completed") < text.index(
            f"processing job probe {later} "
        )


async def test_a_line_another_handler_sees_is_logged_in_the_jobs_own_task_and_span() -> None:
    """A handler other than conveyor's text one may read the context (an
    OpenTelemetry log handler reads the current span): the record of each
    line is made where it was before held lines, in the job's task."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from conveyor.tracing import instrument

    seen: list[tuple[str, bool, str | None]] = []

    class Watching(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            task = asyncio.current_task()
            seen.append(
                (
                    record.__dict__.get("event", ""),
                    trace.get_current_span().get_span_context().is_valid,
                    task.get_name() if task is not None else None,
                )
            )

    restore = worker_lines_to(None, Watching())
    job_tasks: list[str] = []
    app = Conveyor("memory://")
    instrument(app, TracerProvider())

    @app.job("probe")
    async def probe(payload: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        job_tasks.append(task.get_name())

    try:
        async with app:
            job = await app.enqueue("probe", {})
            async with app.worker(concurrency=2, scheduler=False):
                await app.wait(job.id, timeout=10)
    finally:
        restore()
    lines = [line for line in seen if line[0] in ("started", "completed")]
    assert [event for event, _, _ in lines] == ["started", "completed"]
    assert lines[0][1]  # "started": inside the run's span
    assert {task for _, _, task in lines} == {job_tasks[0]}
