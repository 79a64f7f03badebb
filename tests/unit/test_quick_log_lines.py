"""The worker's two lines per job (started, completed) go through
`logs.job_line`, which makes the record logger.info would make at a third of
the cost, and conveyor's own handlers format them with `PlainFormatter`,
which writes what logging.Formatter(PLAIN_FORMAT) writes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.job import Job, JobState
from conveyor.job_lines import job_line
from conveyor.logs import PLAIN_FORMAT, JsonFormatter, PlainFormatter, job_fields

# Set by the time each record is made, so never compared.
_TIMES = ("created", "msecs", "relativeCreated")


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[tuple[logging.Logger, Kept]]:
    logger = logging.getLogger("conveyor.test_quick_lines")
    handler = Kept()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def a_job() -> Job:
    return Job(
        id="j1", name="send.mail", queue="default", payload={}, state=JobState.RUNNING, attempts=2
    )


def both(logger: logging.Logger, job: Job) -> tuple[int, int]:
    """One line each way, from this function: (line of the quick one, line of logger.info)."""
    quick_line = _line() + 1
    job_line(logger, job, "started", "processing job %s %s (attempt %d)", job.name, job.id, 2)
    info_line = _line() + 1
    logger.info(
        "processing job %s %s (attempt %d)", job.name, job.id, 2, extra=job_fields(job, "started")
    )
    return quick_line, info_line


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno


def test_the_record_is_the_one_logger_info_makes(kept: tuple[logging.Logger, Kept]) -> None:
    logger, handler = kept
    before = time.time()
    quick_line, info_line = both(logger, a_job())
    quick, stock = handler.records
    assert quick.lineno == quick_line and stock.lineno == info_line
    same = {k: v for k, v in stock.__dict__.items() if k not in (*_TIMES, "lineno")}
    assert {k: quick.__dict__[k] for k in same} == same
    assert set(quick.__dict__) == set(stock.__dict__)
    assert quick.getMessage() == "processing job send.mail j1 (attempt 2)"
    assert before <= quick.created <= time.time()
    assert int(quick.msecs) == int((quick.created - int(quick.created)) * 1000)
    assert abs(quick.relativeCreated - stock.relativeCreated) < 1000


def test_a_line_from_another_thread_names_that_thread(kept: tuple[logging.Logger, Kept]) -> None:
    logger, handler = kept
    job_line(logger, a_job(), "completed", "job %s done", "j1")
    thread = threading.Thread(
        target=job_line, args=(logger, a_job(), "completed", "job %s done", "j1"), name="other-one"
    )
    thread.start()
    thread.join()
    here, there = handler.records
    assert here.threadName == threading.current_thread().name
    assert there.threadName == "other-one" and there.thread == thread.ident


def test_a_record_factory_of_the_application_still_makes_the_record(
    kept: tuple[logging.Logger, Kept],
) -> None:
    logger, handler = kept
    stock = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = stock(*args, **kwargs)
        record.tenant = "acme"
        return record

    logging.setLogRecordFactory(tagged)
    try:
        line = _line() + 1
        job_line(logger, a_job(), "started", "processing %s", "j1")
    finally:
        logging.setLogRecordFactory(stock)
    (record,) = handler.records
    assert record.__dict__["tenant"] == "acme"
    assert record.lineno == line and record.funcName == (
        "test_a_record_factory_of_the_application_still_makes_the_record"
    )
    assert record.__dict__["event"] == "started"


def test_filters_disabled_loggers_and_levels_hold(kept: tuple[logging.Logger, Kept]) -> None:
    logger, handler = kept
    logger.addFilter(lambda record: "secret" not in record.getMessage())
    try:
        job_line(logger, a_job(), "started", "a %s line", "secret")
        job_line(logger, a_job(), "started", "a %s line", "plain")
        logger.disabled = True
        job_line(logger, a_job(), "started", "a %s line", "unseen")
        logger.disabled = False
        logger.setLevel(logging.WARNING)
        job_line(logger, a_job(), "started", "a %s line", "below the level")
    finally:
        logger.filters.clear()
        logger.disabled = False
    assert [r.getMessage() for r in handler.records] == ["a plain line"]


def test_the_json_form_carries_the_job_fields(kept: tuple[logging.Logger, Kept]) -> None:
    import json

    logger, handler = kept
    job_line(logger, a_job(), "completed", "job %s done", "j1", duration=0.25)
    line = json.loads(JsonFormatter().format(handler.records[0]))
    assert line["event"] == "completed" and line["job_id"] == "j1" and line["attempt"] == 2
    assert line["duration"] == 0.25 and line["message"] == "job j1 done"


@settings(max_examples=300, deadline=None)
@given(
    created=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, 35]),
    message=st.text(),
    args=st.lists(st.integers() | st.text(), max_size=3),
)
def test_plain_formatter_writes_what_the_stock_formatter_writes(
    created: float, level: int, message: str, args: list[Any]
) -> None:
    msg = message.replace("%", "%%") + " %s" * len(args)
    record = logging.LogRecord("conveyor.worker", level, __file__, 1, msg, tuple(args), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    fast, stock = PlainFormatter(), logging.Formatter(PLAIN_FORMAT)
    assert fast.format(record) == stock.format(record)
    # Twice in the same second, the cached part of the time stays right.
    record.msecs = 999.0
    assert fast.format(record) == stock.format(record)


def test_plain_formatter_with_a_traceback_writes_what_the_stock_one_writes() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "conveyor.worker", logging.ERROR, __file__, 1, "failed %s", ("j1",), sys.exc_info()
        )
    record.stack_info = "Stack (most recent call last):\n  here"
    assert PlainFormatter().format(record) == logging.Formatter(PLAIN_FORMAT).format(record)


def test_a_forked_child_names_its_own_process(kept: tuple[logging.Logger, Kept]) -> None:
    import os

    logger, handler = kept
    job_line(logger, a_job(), "started", "before the fork")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            job_line(logger, a_job(), "started", "in the child")
            os.write(write, f"{handler.records[-1].process} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    seen, pid = os.read(read, 100).decode().split()
    os.close(read)
    assert seen == pid == str(child)
    assert handler.records[0].process == os.getpid()


def test_a_line_from_a_task_is_the_record_logger_info_makes(
    kept: tuple[logging.Logger, Kept],
) -> None:
    import asyncio

    logger, handler = kept

    async def in_a_task() -> None:
        both(logger, a_job())

    asyncio.run(in_a_task())
    quick, stock = handler.records
    ignored = (*_TIMES, "lineno")
    assert {k: v for k, v in quick.__dict__.items() if k not in ignored} == {
        k: v for k, v in stock.__dict__.items() if k not in ignored
    }


@pytest.mark.parametrize("line_buffered", [True, False])
def test_each_line_reaches_the_stream_at_once(line_buffered: bool) -> None:
    import os

    from conveyor.logs import LineHandler

    read, write = os.pipe()
    os.set_blocking(read, False)  # a line not written out fails, not hangs
    stream = open(write, "w", buffering=1 if line_buffered else 8192)  # noqa: SIM115
    handler = LineHandler(stream)
    handler.setFormatter(PlainFormatter())
    logger = logging.getLogger("conveyor.test_line_handler")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("first line")
        assert os.read(read, 1000).decode().endswith("first line\n")
        logger.warning("second line")
        assert os.read(read, 1000).decode().endswith("second line\n")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        stream.close()
        os.close(read)


def test_a_level_renamed_later_is_named_as_the_stock_record_names_it(
    kept: tuple[logging.Logger, Kept],
) -> None:
    logger, handler = kept
    job_line(logger, a_job(), "started", "before the rename")
    logging.addLevelName(logging.INFO, "INFORMATION")
    try:
        both(logger, a_job())
    finally:
        logging.addLevelName(logging.INFO, "INFO")
    _, quick, stock = handler.records
    assert quick.levelname == stock.levelname == "INFORMATION"


def test_a_logger_class_of_the_application_makes_the_record(
    kept: tuple[logging.Logger, Kept],
) -> None:
    class Tagging(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
            made = super().makeRecord(*args, **kwargs)
            made.tenant = "acme"
            return made

    _, handler = kept
    logger = Tagging("conveyor.test_quick_lines.tagging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    line = _line() + 1
    job_line(logger, a_job(), "started", "processing %s", "j1")
    (record,) = handler.records
    assert record.__dict__["tenant"] == "acme" and record.__dict__["event"] == "started"
    assert record.lineno == line


@pytest.mark.parametrize("created", [-0.5, -1.5, 0.25, 1_700_000_000.75])
def test_plain_formatter_matches_before_1970_and_after(created: float) -> None:
    record = logging.LogRecord("conveyor.worker", logging.INFO, __file__, 1, "m", (), None)
    fast, stock = PlainFormatter(), logging.Formatter(PLAIN_FORMAT)
    for when in (created, created + 0.5, created - 1):
        record.created = when
        record.msecs = 500.0
        assert fast.format(record) == stock.format(record)


def test_plain_formatter_follows_its_converter_and_datefmt() -> None:
    record = logging.LogRecord("conveyor.worker", logging.INFO, __file__, 1, "m", (), None)
    record.created = 1_700_000_000.5
    fast, stock = PlainFormatter(), logging.Formatter(PLAIN_FORMAT)
    assert fast.format(record) == stock.format(record)
    fast.converter = stock.converter = time.gmtime  # type: ignore[method-assign]
    assert fast.format(record) == stock.format(record)
    fast.datefmt = stock.datefmt = "%H:%M"
    assert fast.format(record) == stock.format(record)


def test_a_handler_without_a_newline_terminator_still_flushes() -> None:
    import io

    from conveyor.logs import LineHandler

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, line_buffering=True)
    handler = LineHandler(stream)
    handler.terminator = ""
    handler.emit(
        logging.LogRecord("conveyor.worker", logging.INFO, __file__, 1, "a record", (), None)
    )
    assert raw.getvalue() == b"a record"


@pytest.fixture
def plain() -> Iterator[tuple[logging.Logger, Any]]:
    """conveyor's own text handler on a logger of its own, writing to a buffer."""
    import io

    from conveyor.logs import LineHandler

    buffer = io.StringIO()
    handler = LineHandler(buffer)
    handler.setFormatter(PlainFormatter())
    logger = logging.getLogger("conveyor.test_plain_lines")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def ours_only(logger: logging.Logger) -> None:
    """Take pytest's capture handlers off the logger (it adds them to every
    non-propagating logger as each test starts): they would make every line
    a record, and the path without one would go untested."""
    from conveyor.logs import LineHandler

    logger.handlers[:] = [h for h in logger.handlers if type(h) is LineHandler]


def test_a_line_written_without_a_record_is_the_line_logging_writes(
    plain: tuple[logging.Logger, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, buffer = plain
    ours_only(logger)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_250_000_000)
    job = a_job()
    for write in (job_line, None):
        if write is None:
            logger.info("processing job %s %s (attempt %d)", job.name, job.id, 2)
        else:
            write(logger, job, "started", "processing job %s %s (attempt %d)", job.name, job.id, 2)
    quick, stock = buffer.getvalue().splitlines()
    assert quick == stock
    assert stock.endswith("INFO conveyor.test_plain_lines: processing job send.mail j1 (attempt 2)")


def test_another_handler_or_a_filter_sees_the_record(
    plain: tuple[logging.Logger, Any], kept: tuple[logging.Logger, Kept]
) -> None:
    logger, buffer = plain
    ours_only(logger)
    _, other = kept
    logger.addHandler(other)
    try:
        job_line(logger, a_job(), "started", "to %s", "both")
    finally:
        logger.removeHandler(other)
    (seen,) = other.records
    assert seen.__dict__["event"] == "started" and buffer.getvalue().endswith(": to both\n")
    handler = logger.handlers[0]
    handler.addFilter(lambda r: "secret" not in r.getMessage())
    job_line(logger, a_job(), "started", "a %s line", "secret")
    handler.filters.clear()
    assert "secret" not in buffer.getvalue()


def test_a_handler_above_info_is_passed_over_and_propagation_stops_where_it_is_off(
    plain: tuple[logging.Logger, Any],
) -> None:
    import io

    from conveyor.logs import LineHandler

    logger, buffer = plain
    ours_only(logger)
    loud = io.StringIO()
    warnings_only = LineHandler(loud)
    warnings_only.setFormatter(PlainFormatter())
    warnings_only.setLevel(logging.WARNING)
    parent = logging.getLogger("conveyor")
    parent.addHandler(warnings_only)
    child = logging.getLogger("conveyor.test_plain_lines.child")
    try:
        job_line(child, a_job(), "started", "one %s", "line")
        logger.addHandler(warnings_only)
        job_line(child, a_job(), "started", "two %s", "lines")
    finally:
        parent.removeHandler(warnings_only)
        logger.removeHandler(warnings_only)
    assert buffer.getvalue().count("\n") == 2 and loud.getvalue() == ""


def test_a_record_factory_of_the_application_is_called_even_for_plain_lines(
    plain: tuple[logging.Logger, Any],
) -> None:
    """A factory may do more than fill fields (count lines, carry a request
    id to a handler added later): with one set, every line is a record."""
    logger, buffer = plain
    ours_only(logger)
    stock = logging.getLogRecordFactory()
    made: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = stock(*args, **kwargs)
        made.append(record.getMessage())
        return record

    logging.setLogRecordFactory(counting)
    try:
        job_line(logger, a_job(), "started", "processing %s", "j1")
    finally:
        logging.setLogRecordFactory(stock)
    assert made == ["processing j1"] and buffer.getvalue().endswith(": processing j1\n")


def test_a_message_logging_cannot_format_goes_to_handle_error_not_to_the_caller(
    plain: tuple[logging.Logger, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, buffer = plain
    ours_only(logger)
    monkeypatch.setattr(logging, "raiseExceptions", False)
    job_line(logger, a_job(), "started", "attempt %d", "not a number")  # no raise
    job_line(logger, a_job(), "started", "x %(n)s", {"n": 1})  # a lone mapping, as logging takes it

    class Lazy:
        def __str__(self) -> str:
            return "id %s"

    job_line(logger, a_job(), "started", Lazy(), 7)  # type: ignore[arg-type]
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" INFO conveyor.test_plain_lines: x 1")
    assert lines[1].endswith(" INFO conveyor.test_plain_lines: id 7")


def test_a_patched_logging_sees_every_line(
    plain: tuple[logging.Logger, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sentry's logging integration replaces Logger.callHandlers to keep INFO
    lines as breadcrumbs; a handler's emit may be replaced on the instance."""
    logger, buffer = plain
    ours_only(logger)
    seen: list[str] = []
    stock = logging.Logger.callHandlers

    def spying(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(record.getMessage())
        stock(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", spying)
    job_line(logger, a_job(), "started", "job %s", "one")
    monkeypatch.setattr(logging.Logger, "callHandlers", stock)
    handler = logger.handlers[0]
    emitted: list[str] = []
    handler.emit = lambda record: emitted.append(record.getMessage())  # type: ignore[method-assign]
    try:
        job_line(logger, a_job(), "started", "job %s", "two")
    finally:
        del handler.emit
    assert seen == ["job one"] and emitted == ["job two"]
    assert buffer.getvalue().endswith(": job one\n")
