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
"""

from __future__ import annotations

import logging
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from conveyor.log_records import one_mapping, record, stamp
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
    if not logger.isEnabledFor(logging.INFO):
        return
    # An application's own Logger class (setLoggerClass) may make records
    # its way; so may an application that turned call sites off.
    if type(logger) is not logging.Logger or logging._srcfile is None:
        logger.info(msg, *args, extra=job_fields(job, event, duration), stacklevel=2)
        return
    handlers = _plain_handlers(logger) if _logging_as_shipped(logger) else None
    text = _text(msg, args) if handlers else None
    if handlers and text is not None:
        _write(handlers, logger, text, msg, args, sys._getframe(1))
        return
    line = _record_at(sys._getframe(1), logger, msg, args)
    line.__dict__.update(job_fields(job, event, duration))
    logger.handle(line)


def _record_at(
    caller: FrameType, logger: logging.Logger, msg: str, args: tuple[Any, ...]
) -> logging.LogRecord:
    """The INFO record logging would make for this call from `caller`'s frame."""
    code = caller.f_code
    return record(
        logger.name, logging.INFO, code.co_filename, caller.f_lineno, msg, args, code.co_name
    )


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
    handlers: list[LineHandler],
    logger: logging.Logger,
    text: str,
    msg: str,
    args: tuple[Any, ...],
    caller: FrameType,
) -> None:
    times: dict[str, Any] = {}
    stamp(times)
    tail = f" {logging.getLevelName(logging.INFO)} {logger.name}: {text}"
    for handler in handlers:
        formatter = handler.formatter
        assert isinstance(formatter, PlainFormatter)
        handler.acquire()
        try:
            line = formatter.time_text(times["created"], times["msecs"]) + tail
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except RecursionError:
            raise
        except Exception:
            handler.handleError(_record_at(caller, logger, msg, args))
        finally:
            handler.release()
