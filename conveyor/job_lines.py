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
from typing import TYPE_CHECKING, Any

from conveyor.log_records import record, stamp
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
    # A record factory of the application's may do more than fill fields:
    # with one set, every line is a record.
    handlers = (
        _plain_handlers(logger) if logging.getLogRecordFactory() is logging.LogRecord else None
    )
    if handlers:
        _write(handlers, logger, msg, args, sys._getframe(1))
        return
    caller = sys._getframe(1)
    code = caller.f_code
    line = record(
        logger.name, logging.INFO, code.co_filename, caller.f_lineno, msg, args, code.co_name
    )
    line.__dict__.update(job_fields(job, event, duration))
    logger.handle(line)


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
            if (
                type(handler) is not LineHandler
                or handler.filters
                or type(handler.formatter) is not PlainFormatter
                or handler.formatter.datefmt is not None
            ):
                return None
            found.append(handler)
        current = current.parent if current.propagate else None
    return found or None  # none at all: logging's last resort decides


def _write(
    handlers: list[LineHandler],
    logger: logging.Logger,
    msg: str,
    args: tuple[Any, ...],
    caller: Any,
) -> None:
    times: dict[str, Any] = {}
    stamp(times)
    text = msg % args if args else msg
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
            code = caller.f_code
            failed = record(
                logger.name,
                logging.INFO,
                code.co_filename,
                caller.f_lineno,
                msg,
                args,
                code.co_name,
            )
            handler.handleError(failed)
        finally:
            handler.release()
