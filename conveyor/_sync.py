"""The one place where blocking twins of async calls are made.

`enqueue_sync = blocking(enqueue)` in a class body gives a method with the same
parameters that runs the coroutine on a private event loop in a helper thread
and returns its result. One loop thread per owner object keeps the backend's
connections on one loop, and never touches the caller's thread state.

After a fork the child has no helper thread (only the forking thread is
copied), so the facade's fork hook calls `Portal.after_fork_in_child()`: the
child's next blocking call starts a loop of its own instead of waiting forever
for one that does not run.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from conveyor.job import ConveyorError

P = ParamSpec("P")
R = TypeVar("R")


# What a forked child inherited from its parent and must neither use nor
# close (an event loop, connections): kept referenced for the child's life, so
# that no finaliser closes, or warns about, what still belongs to the parent.
_INHERITED: list[object] = []


def leave_alone(*inherited: object) -> None:
    """Keep objects a forked child inherited referenced, unused, until it exits."""
    _INHERITED.extend(inherited)


class Portal:
    """An event loop running in a daemon thread, started on first use."""

    def __init__(self, name: str = "conveyor-sync") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def call(self, make: Callable[[], Coroutine[Any, Any, R]], what: str) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConveyorError(
                f"{what}_sync() was called inside a running event loop; "
                f"use `await ...{what}(...)` in async code"
            )
        loop = self._ensure()
        return asyncio.run_coroutine_threadsafe(make(), loop).result()

    @property
    def running(self) -> bool:
        return self._loop is not None

    def owns_current_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def after_fork_in_child(self) -> None:
        """Forget the parent's loop and thread in a forked child: the thread
        does not exist here, and the loop (which looks running) must not be
        closed, its files are the parent's too. The next call starts afresh."""
        self._lock = threading.Lock()  # may have been held by another thread
        if self._loop is not None:
            leave_alone(self._loop, self._thread)
        self._loop = self._thread = None

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()


class HasPortal(Protocol):
    @property
    def portal(self) -> Portal: ...


S = TypeVar("S", bound=HasPortal)


def blocking(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
    *,
    in_caller_thread: Callable[[S, dict[str, Any]], None] | None = None,
) -> Callable[Concatenate[S, P], R]:
    """Make the blocking twin of an async method. `in_caller_thread(self,
    keyword_arguments)` may rewrite the keyword arguments in the calling
    thread first, for what belongs to that thread (a database connection
    inside its transaction)."""
    what = method.__name__

    @functools.wraps(method)
    def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if in_caller_thread is not None:
            arguments: dict[str, Any] = dict(kwargs)
            in_caller_thread(self, arguments)
            return self.portal.call(lambda: method(self, *args, **arguments), what)
        return self.portal.call(lambda: method(self, *args, **kwargs), what)

    twin.__name__ = twin.__qualname__ = f"{what}_sync"
    twin.__doc__ = f"Blocking twin of `{what}` for sync code (not inside an event loop)."
    return twin
