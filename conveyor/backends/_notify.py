"""Wake-ups that cross event loops and threads.

A waiter registers an asyncio.Event of its own loop; `notify()` may be called
from any thread or loop and sets every registered event on its owner's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def notify(self) -> None:
        with self._lock:
            if not self._waiters:
                return
            waiters = list(self._waiters)
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, event in waiters:
            if loop is current:
                event.set()
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float, ready: Callable[[], bool] | None = None) -> bool:
        """Wait up to `timeout` seconds for a notify(); True if one came.

        `ready` is checked after registering, so a notify that raced ahead of
        the registration is not lost."""
        if timeout <= 0:
            return False
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        try:
            if ready is not None and ready():
                return True
            async with asyncio.timeout(timeout):
                await entry[1].wait()
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)
