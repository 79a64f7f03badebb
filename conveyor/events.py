"""Lifecycle events: `app.on("job.failed", callback)`.

Events are local to the process that caused them: `job.enqueued` and
`job.cancelled` (of a pending job) fire in the producer, the `job.started` /
`completed` / `failed` / `retrying` / `cancelled` of a run fire in the worker.
A callback may be sync or async; its errors are logged, never raised into the
queue's own work.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.job import InvalidOptionError, Job

logger = logging.getLogger("conveyor.events")

EVENTS = frozenset(
    {
        "job.enqueued",
        "job.started",
        "job.completed",
        "job.failed",
        "job.retrying",
        "job.cancelled",
        "scheduler.tick",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    job: Job | None
    at: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[Event], None] | Callable[[Event], Awaitable[None]]


class EventBus:
    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def on(self, name: str, callback: Callback) -> None:
        if name not in EVENTS:
            known = ", ".join(sorted(EVENTS))
            raise InvalidOptionError(f"unknown event {name!r}; known events: {known}")
        self._callbacks.setdefault(name, []).append(callback)

    def wants(self, name: str) -> bool:
        """Cheap check so hot paths build no Event nobody listens to."""
        return name in self._callbacks

    def emit(self, name: str, job: Job | None = None, **data: Any) -> None:
        callbacks = self._callbacks.get(name)
        if not callbacks:
            return
        event = Event(name, job, data=data)
        for callback in callbacks:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._pending.add(task)
                    task.add_done_callback(self._done)
            except Exception:
                logger.exception("event callback for %s failed", name)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("event callback failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for async callbacks still running (used at shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
