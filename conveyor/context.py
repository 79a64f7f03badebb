"""JobContext: what a handler knows about the run it is in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor.codec import storable, storable_fields
from conveyor.job import InvalidOptionError, Job
from conveyor.logs import job_fields

logger = logging.getLogger("conveyor.job")

ProgressSink = Callable[[Job, float | None, list[dict[str, Any]]], Awaitable[bool]]


class JobContext:
    """Handed to every handler as its second argument.

    `cancelled` is set when the job is cancelled, times out, loses its lease or
    the worker hands it back at shutdown; sync handlers poll `is_cancelled()`.
    """

    __slots__ = ("_event", "_logs", "_loop", "_sink", "_stopped", "job", "stop_reason")

    def __init__(self, job: Job, sink: ProgressSink, loop: asyncio.AbstractEventLoop) -> None:
        self.job = job
        self._sink = sink
        self._loop = loop
        self._logs: list[dict[str, Any]] = []
        self._stopped = False  # read by sync handlers in their thread
        self._event: asyncio.Event | None = None
        self.stop_reason: str | None = None

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempts

    @property
    def cancelled(self) -> asyncio.Event:
        # Made on first use: most handlers never look, and the worker runs many jobs.
        if self._event is None:
            self._event = asyncio.Event()
            if self._stopped:
                self._event.set()
        return self._event

    def is_cancelled(self) -> bool:
        return self._stopped

    def log(self, message: str, **fields: Any) -> None:
        """Keep a line on the job record (flushed with progress, heartbeat and finish)."""
        entry = {"at": time.time(), "msg": storable(str(message)), **storable_fields(fields)}
        self._logs.append(entry)
        logger.info(
            "%s [%s] %s %s",
            self.job.name,
            self.job.id,
            message,
            fields or "",
            extra={**job_fields(self.job, "log"), "fields": fields or None},
        )

    async def progress(self, percent: float) -> None:
        """Record progress (0-100) on the job; returns once it is stored."""
        value = float(percent)
        if not 0.0 <= value <= 100.0:
            raise InvalidOptionError(f"progress must be between 0 and 100, got {percent}")
        await self._sink(self.job, value, self.take_logs())

    def progress_sync(self, percent: float) -> None:
        """`progress` for sync handlers, which run in a worker thread."""
        future = asyncio.run_coroutine_threadsafe(self.progress(percent), self._loop)
        future.result()

    def take_logs(self) -> list[dict[str, Any]]:
        logs, self._logs = self._logs, []
        return logs

    def mark_stopped(self, reason: str) -> None:
        """Called by the worker (on its loop) to tell the handler to stop."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped = True
        if self._event is not None:
            self._event.set()
