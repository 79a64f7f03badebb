"""Log records for the worker's lines per job, as the standard library makes
them but at half the cost.

`logging.LogRecord.__init__` works out, for every record, what is the same
for every record of one call site (the file's base name and module, the
level's name) and asks the OS for the process id. At thousands of jobs a
second, with two lines per job, that was the largest part of the lines'
cost. `record()` copies what a call site's records share from one stock
record made for it, and sets the rest as `LogRecord.__init__` of this
interpreter does (3.11 to 3.13, whose code this mirrors; the tests compare
the two field by field). Another interpreter, or an application that set a
record factory of its own, gets its records from the factory.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

_VERSION = sys.version_info[:2]
# When logging was imported (seconds, or nanoseconds from 3.13 on): the
# origin of relativeCreated.
_START: float = logging._startTime  # type: ignore[attr-defined]
_MIRRORED = _VERSION in ((3, 11), (3, 12), (3, 13))

# What a call site's records share: copied from one stock record.
_SHARED = (
    "name",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "funcName",
)


def record(
    name: str, level: int, pathname: str, lineno: int, msg: str, args: tuple[Any, ...], func: str
) -> logging.LogRecord:
    """The record `logging.getLogRecordFactory()(name, level, pathname,
    lineno, msg, args, None, func)` makes."""
    factory = logging.getLogRecordFactory()
    if not _MIRRORED or factory is not logging.LogRecord or one_mapping(args):
        return factory(name, level, pathname, lineno, msg, args, None, func)
    made = logging.LogRecord.__new__(logging.LogRecord)
    fields = made.__dict__
    fields.update(_shared(name, level, pathname, func))
    fields["levelname"] = logging.getLevelName(level)  # addLevelName may rename it
    fields["msg"] = msg
    fields["args"] = args
    fields["lineno"] = lineno
    stamp(fields)
    if logging.logThreads:
        fields["thread"] = threading.get_ident()
        fields["threadName"] = threading.current_thread().name
    else:
        fields["thread"] = fields["threadName"] = None
    fields["processName"] = _process_name() if logging.logMultiprocessing else None
    fields["process"] = _pid() if logging.logProcesses else None
    if _VERSION >= (3, 12):
        fields["taskName"] = _task_name() if getattr(logging, "logAsyncioTasks", False) else None
    return made


def one_mapping(args: tuple[Any, ...]) -> bool:
    """Whether LogRecord formats `msg % args[0]`: a lone non-empty mapping."""
    return len(args) == 1 and isinstance(args[0], Mapping) and bool(args[0])


@functools.lru_cache(maxsize=128)
def _shared(name: str, level: int, pathname: str, func: str) -> dict[str, Any]:
    stock = logging.LogRecord(name, level, pathname, 0, "", (), None, func)
    return {key: stock.__dict__[key] for key in _SHARED}


def _fill_3_11(fields: dict[str, Any], now: float) -> None:
    fields["created"] = now
    fields["msecs"] = int((now - int(now)) * 1000) + 0.0
    fields["relativeCreated"] = (now - _START) * 1000


def _fill_3_13(fields: dict[str, Any], now: float) -> None:
    # 3.13 keeps nanoseconds (an int here), _startTime too.
    fields["created"] = created = now / 1e9
    msecs = (now % 1_000_000_000) // 1_000_000 + 0.0
    if msecs == 999.0 and int(created) != now // 1_000_000_000:
        msecs = 0.0  # the float rounded up to the next second
    fields["msecs"] = msecs
    fields["relativeCreated"] = (now - _START) / 1e6


def _clock_3_11() -> float:
    return time.time()


def _clock_3_13() -> float:
    return time.time_ns()


#: the clock LogRecord.__init__ of this interpreter reads (time.time, or
#: time.time_ns from 3.13 on), read now
clock: Callable[[], float] = _clock_3_13 if _VERSION >= (3, 13) else _clock_3_11
#: sets "created", "msecs" and "relativeCreated" in a record's fields to a
#: reading of `clock`, as this interpreter's LogRecord.__init__ does
fill: Callable[[dict[str, Any], float], None] = _fill_3_13 if _VERSION >= (3, 13) else _fill_3_11


def stamp(fields: dict[str, Any]) -> None:
    """Set "created", "msecs" and "relativeCreated" in a record's fields to now."""
    fill(fields, clock())


def _process_name() -> str:
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is not None:
        try:
            name: str = multiprocessing.current_process().name
            return name
        except Exception:  # as LogRecord: multiprocessing may be half-imported
            pass
    return "MainProcess"


def _task_name() -> str | None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            name: str = asyncio.current_task().get_name()
            return name
        except Exception:  # no running loop, or no task: as LogRecord, None
            pass
    return None


# The process id, asked of the OS once per process (a system call per record
# otherwise); a forked child asks again.
_own_pid: int | None = None


def _pid() -> int:
    global _own_pid
    if _own_pid is None:
        _own_pid = os.getpid()
    return _own_pid


def _forget_pid() -> None:
    global _own_pid
    _own_pid = None


os.register_at_fork(after_in_child=_forget_pid)
