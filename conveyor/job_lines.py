"""The two lines a worker writes for every job (started, completed), made
cheaply: at thousands of jobs a second they were a fifth of its CPU.

`job_line(logger, job, event, msg, *args)` writes what
`logger.info(msg, *args, extra=job_fields(job, event))` writes. Where every
handler the line reaches is conveyor's own text handler (`LineHandler` with
`PlainFormatter`, unfiltered: what a worker gets when the application did
not configure logging, and what `conveyor worker` configures) and no record
factory of the application's is set, nothing else can see a record, so the
line is formatted and written without one, under
each handler's lock as `Handler.handle` would. Anywhere else the record is
made as `logging` makes it (log_records.record), the call site read off the
caller's frame rather than found by walking the stack.

`HeldLines` makes the same lines, stamped when they happen, and writes
those of one loop step together: one look at the handlers and one write per
handler for a batch of jobs, where each line cost both (a third of a line's
cost, and a system call).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from conveyor.log_records import clock, fill, one_mapping, record
from conveyor.logs import LineHandler, PlainFormatter, job_fields

if TYPE_CHECKING:
    from conveyor.job import Job


def job_line(
    logger: logging.Logger,
    job: Job,
    event: str,
    msg: str,
    *args: object,
    duration: float | None = None,
) -> None:
    """`logger.info(msg, *args, extra=job_fields(job, event, duration))`."""
    line = _made(logger, job, event, msg, args, duration, sys._getframe(1))
    if line is not None:
        _write_lines(logger, [line])


@dataclass(slots=True)
class _Line:
    """A job line held for writing: what it says, when and where it was made."""

    job: Job
    event: str
    msg: str
    args: tuple[Any, ...]
    duration: float | None
    now: float  # a reading of log_records.clock
    code: CodeType
    lineno: int


def _made(
    logger: logging.Logger,
    job: Job,
    event: str,
    msg: str,
    args: tuple[Any, ...],
    duration: float | None,
    caller: FrameType,
) -> _Line | None:
    """The line `caller` logs, stamped now; None where nothing is to be
    written, or where it went through logger.info: an application's own
    Logger class (setLoggerClass) may make records its way, and so may an
    application that turned call sites off."""
    if not logger.isEnabledFor(logging.INFO):
        return None
    if type(logger) is not logging.Logger or logging._srcfile is None:
        # stacklevel 3: the caller of job_line or HeldLines.add.
        logger.info(msg, *args, extra=job_fields(job, event, duration), stacklevel=3)
        return None
    return _Line(job, event, msg, args, duration, clock(), caller.f_code, caller.f_lineno)


class HeldLines:
    """A worker's job lines that only conveyor's own text handlers would see,
    each stamped as it is made, written together by `write()`: where the
    worker starts a batch of jobs, before any of their handlers runs, so a
    "started" line is out before its job begins; or, for lines made as jobs
    end, at the next loop step (`write_soon`). Such a line is text, never a
    record, so nothing can tell in which task or context it was made; a line
    another handler, a filter or a record factory would see is not held
    (`hold` says so) and its caller logs it as before, in the job's own task.
    Lines of one logger keep their order; a line logged another way in the
    same loop step (a warning) may come out before them. Used from the
    worker's loop only."""

    def __init__(self) -> None:
        self._held: list[tuple[logging.Logger, _Line]] = []
        self._soon: asyncio.Handle | None = None
        # Loggers found to reach only conveyor's text handlers since the
        # last write: looked at once per batch, not once per line.
        self._plain: set[logging.Logger] = set()

    def __len__(self) -> int:
        return len(self._held)

    def hold(
        self,
        logger: logging.Logger,
        job: Job,
        event: str,
        msg: str,
        *args: object,
        duration: float | None = None,
    ) -> bool:
        """Hold the line `job_line(logger, job, event, msg, *args,
        duration=duration)` writes, if only conveyor's text handlers would
        see it: True when held (or below the logger's level: nothing to
        write); False when the caller is to log it now with job_line."""
        if not logger.isEnabledFor(logging.INFO):
            return True
        if logger not in self._plain:
            if not _plain(logger):
                return False
            self._plain.add(logger)
        caller = sys._getframe(1)
        line = _Line(job, event, msg, args, duration, clock(), caller.f_code, caller.f_lineno)
        self._held.append((logger, line))
        return True

    def write_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write what is held at the next loop step (unless written before)."""
        if self._held and self._soon is None:
            self._soon = loop.call_soon(self.write)

    def write(self) -> None:
        """Write every line held, in order: per run of lines of one logger,
        one look at its handlers and one write to each."""
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        held, self._held = self._held, []
        self._plain.clear()
        start = 0
        while start < len(held):
            logger = held[start][0]
            end = start + 1
            while end < len(held) and held[end][0] is logger:
                end += 1
            _write_lines(logger, [line for _, line in held[start:end]])
            start = end


def _plain(logger: logging.Logger) -> bool:
    """Whether a line of `logger` would be written without a record."""
    return (
        type(logger) is logging.Logger
        and logging._srcfile is not None
        and _logging_as_shipped(logger)
        and _plain_handlers(logger) is not None
    )


def _write_lines(logger: logging.Logger, lines: list[_Line]) -> None:
    """Write `lines` of `logger`: without records where only conveyor's text
    handlers are reached, else a record each, as logging makes it."""
    handlers = _plain_handlers(logger) if _logging_as_shipped(logger) else None
    if handlers:
        texts = [_text(line.msg, line.args) for line in lines]
        if None not in texts:
            _write(handlers, logger, lines, texts)  # type: ignore[arg-type]
            return
    for line in lines:
        made = _record_of(line, logger)
        made.__dict__.update(job_fields(line.job, line.event, line.duration))
        logger.handle(made)


def _record_of(line: _Line, logger: logging.Logger) -> logging.LogRecord:
    """The INFO record logging would have made for `line` when it was made."""
    made = record(
        logger.name,
        logging.INFO,
        line.code.co_filename,
        line.lineno,
        line.msg,
        line.args,
        line.code.co_name,
    )
    fill(made.__dict__, line.now)
    return made


def _logging_as_shipped(logger: logging.Logger) -> bool:
    """Whether a record of `logger` would go through logging's own code, as
    the standard library ships it: no record factory of the application's (it
    may count lines or carry context, not only fill fields), no patched
    Logger.handle or callHandlers (Sentry's logging integration replaces the
    latter to keep INFO lines as breadcrumbs), none on the logger itself."""
    return (
        _SHIPPED
        and logging.getLogRecordFactory() is logging.LogRecord
        and logging.Logger.handle is _HANDLE
        and logging.Logger.callHandlers is _CALL_HANDLERS
        and _LOGGER_PARTS.isdisjoint(logger.__dict__)
    )


_HANDLE = logging.Logger.handle
_CALL_HANDLERS = logging.Logger.callHandlers
# Patched already when this module was imported: lines always go as records.
_SHIPPED = _HANDLE.__code__.co_filename == _CALL_HANDLERS.__code__.co_filename == logging.__file__
# What a logger, handler or formatter instance may have replaced on itself.
_LOGGER_PARTS = frozenset(("handle", "callHandlers"))
_HANDLER_PARTS = frozenset(("handle", "emit", "format", "flush", "acquire", "release", "filter"))
_FORMATTER_PARTS = frozenset(("format", "formatTime", "time_text", "formatMessage"))


def _text(msg: object, args: tuple[Any, ...]) -> str | None:
    """The message as LogRecord.getMessage makes it; None where that fails
    (the record path then reports it through handleError, as logging does)."""
    try:
        if not args:
            return str(msg)
        return str(msg) % (args[0] if one_mapping(args) else args)
    except Exception:
        return None


def _plain_handlers(logger: logging.Logger) -> list[LineHandler] | None:
    """The handlers an INFO record of `logger` reaches (as callHandlers walks
    them), when each is conveyor's text handler and nothing filters; else
    None. Only the logger a record starts at applies its filters."""
    if logger.filters:
        return None
    found: list[LineHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if handler.level > logging.INFO:
                continue
            formatter = handler.formatter
            if (
                type(handler) is not LineHandler
                or handler.filters
                or type(formatter) is not PlainFormatter
                or formatter.datefmt is not None
                or not _HANDLER_PARTS.isdisjoint(handler.__dict__)
                or not _FORMATTER_PARTS.isdisjoint(formatter.__dict__)
            ):
                return None
            found.append(handler)
        current = current.parent if current.propagate else None
    return found or None  # none at all: logging's last resort decides


def _write(
    handlers: list[LineHandler], logger: logging.Logger, lines: list[_Line], texts: list[str]
) -> None:
    middle = f" {logging.getLevelName(logging.INFO)} {logger.name}: "
    for handler in handlers:
        formatter = handler.formatter
        assert isinstance(formatter, PlainFormatter)
        written: list[str] = []
        handler.acquire()
        try:
            written = _lines_text(formatter, lines, texts, middle, handler.terminator)
            handler.stream.write("".join(written))
            handler.flush()
        except RecursionError:
            raise
        except Exception as exc:
            if written and isinstance(exc, UnicodeError):
                # Encoded before any of it was written: each line alone, so
                # only the one the stream cannot take fails, as logging's would.
                for line, text in zip(lines, written, strict=True):
                    _write_one(handler, text, line, logger)
            else:
                for line in lines:  # each line failed, as each emit would have
                    handler.handleError(_record_of(line, logger))
        finally:
            handler.release()


def _lines_text(
    formatter: PlainFormatter, lines: list[_Line], texts: list[str], middle: str, end: str
) -> list[str]:
    """Each line as the formatter writes it (`middle`: level and logger);
    lines of one millisecond, as most of a batch are, share their time text."""
    times: dict[str, Any] = {}
    shown: tuple[float, float] | None = None
    stamp = ""
    out = []
    for line, text in zip(lines, texts, strict=True):
        fill(times, line.now)
        created, msecs = times["created"], times["msecs"]
        if shown is None or shown != (math.floor(created), msecs):
            shown = (math.floor(created), msecs)
            stamp = formatter.time_text(created, msecs)
        out.append(stamp + middle + text + end)
    return out


def _write_one(handler: LineHandler, text: str, line: _Line, logger: logging.Logger) -> None:
    try:
        handler.stream.write(text)
        handler.flush()
    except RecursionError:
        raise
    except Exception:
        handler.handleError(_record_of(line, logger))
