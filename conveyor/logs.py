"""Making the worker's log lines visible when nothing else configured logging,
and the JSON form of its lines (`conveyor worker --log-format json`).

A worker run inside a web app (a FastAPI lifespan under uvicorn, a Django
management command, a script) often runs where nobody configured the root
logger: uvicorn configures only its own loggers. Python then drops INFO lines,
so the worker's "started" line and every `ctx.log` line vanished. When a
worker starts in such a process, conveyor gives its own logger one stderr
handler at INFO. Logging that the application configured is never touched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.job import Job

LOGGER = "conveyor"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")

# The fields a worker's lifecycle lines carry (as `extra=`), in the order the
# JSON form writes them.
JOB_FIELDS = ("event", "job_id", "job_name", "queue", "attempt", "duration", "error")


def job_fields(
    job: Job, event: str, duration: float | None = None, error: str | None = None
) -> dict[str, Any]:
    """The `extra=` of a lifecycle line about `job`: what the JSON form shows
    as fields (duration in seconds, None where the handler did not run)."""
    return {
        "event": event,
        "job_id": job.id,
        "job_name": job.name,
        "queue": job.queue,
        "attempt": job.attempts,
        "duration": None if duration is None else round(duration, 6),
        "error": error,
    }


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler conveyor gives the worker's lines (stderr by default): a
    StreamHandler that does not flush a line-buffered stream (stderr always
    is) after each line, since the line's newline wrote it out already."""

    def flush(self) -> None:
        if "\n" not in self.terminator or not getattr(self.stream, "line_buffering", False):
            super().flush()


class PlainFormatter(logging.Formatter):
    """logging.Formatter(PLAIN_FORMAT), writing the same lines at a third of
    the cost: the date and time part of `asctime` is made once a second, and
    a line without a traceback is one f-string."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)
        # (whole second, converter, its date and time), replaced in one
        # assignment: a formatter shared by handlers in several threads never
        # pairs a second with another second's text.
        self._cached: tuple[int | None, object, str] = (None, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.time_text(record.created, record.msecs)

    def time_text(self, created: float, msecs: float) -> str:
        """`asctime` of a record made at `created` (its `msecs`), without a datefmt."""
        # Clocks move to and from summer time at whole seconds, so the local
        # time of a whole second is that of every instant within it.
        second, converter = math.floor(created), self.converter
        cached_second, cached_converter, stamp = self._cached
        if second != cached_second or converter != cached_converter:
            stamp = time.strftime(self.default_time_format, converter(created))
            self._cached = (second, converter, stamp)
        msec_format = self.default_msec_format
        return msec_format % (stamp, msecs) if msec_format else stamp

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = message = record.getMessage()
        record.asctime = stamp = self.formatTime(record, self.datefmt)
        return f"{stamp} {record.levelname} {record.name}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message,
    the job fields of a lifecycle line (`job_fields`) and, for an error with
    a traceback, `exc_info`. Log collectors (Loki, CloudWatch, Datadog) read
    the fields as they are, with no pattern to maintain."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        fields = record.__dict__.get("fields")
        if fields:  # ctx.log(msg, **fields)
            line["fields"] = fields
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def log_format(given: str | None = None) -> str:
    """The format asked for: `given` (a flag), else $CONVEYOR_LOG_FORMAT, else text."""
    from conveyor.job import InvalidOptionError
    from conveyor.settings import CONVEYOR_LOG_FORMAT

    value = (given or os.environ.get(CONVEYOR_LOG_FORMAT) or "text").strip().lower()
    if value not in LOG_FORMATS:
        raise InvalidOptionError(
            f"log format must be one of {', '.join(LOG_FORMATS)}, got {value!r}"
            f" (--log-format or {CONVEYOR_LOG_FORMAT})"
        )
    return value


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else PlainFormatter()


# The loggers the worker writes through; a handler on any of them (or on an
# ancestor, the root included) means the application chose where lines go.
_WORKER_LOGGERS = ("conveyor.worker", "conveyor.job", "conveyor.scheduler")


def show_worker_logs_if_unconfigured() -> None:
    """Give the "conveyor" logger a stderr handler at INFO, unless logging is
    configured for it already (by the application, the CLI, or an earlier
    worker of this process), so no line is ever printed twice."""
    if any(logging.getLogger(name).hasHandlers() for name in _WORKER_LOGGERS):
        return
    ours = logging.getLogger(LOGGER)
    handler = LineHandler()  # stderr
    handler.setFormatter(formatter(log_format()))
    ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        # Without a level of its own the root's default (WARNING) applies.
        ours.setLevel(logging.INFO)
