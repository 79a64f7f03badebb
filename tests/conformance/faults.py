"""Faults put in front of a real backend: its calls fail, hang or come back
late, as when the network or the server goes away, or the worker's process
is frozen while a reply is on its way.

The backend behind is the real one (memory, SQLite, Redis); only the calls
the test chooses are intercepted, by wrapping the bound methods on the
backend instance. Everything that shares the backend (the test's own app
calls too) sees the fault, so tests `heal()` before they inspect."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor.job import Job

# The calls a worker makes that can return claimed jobs.
CLAIM_CALLS = ("claim", "finish_and_claim", "claim_blocking")


class Unreachable(ConnectionError):
    """What a broken backend raises (a ConnectionError, as a dropped socket would)."""


def _claimed_jobs(name: str, result: Any) -> list[Job]:
    if name == "finish_and_claim":
        return list(result[1])
    return list(result)


class BackendFaults:
    """Wraps every public coroutine method of `backend` (but open/close)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.broken = False  # every call raises Unreachable
        self._healed = asyncio.Event()
        self._healed.set()
        self._hung: tuple[str, ...] = ()  # which calls hang (empty: all of them)
        # Called with (call name, the jobs it claimed) before the reply is
        # handed to the worker; may wait (a slow or frozen reply).
        self.after_claim: Callable[[str, list[Job]], Awaitable[None]] | None = None
        self.calls: list[str] = []
        for name in dir(type(backend)):
            if name.startswith("_") or name in ("open", "close"):
                continue
            method = getattr(backend, name)
            if inspect.iscoroutinefunction(method):
                setattr(backend, name, self._wrap(name, method))

    def _wrap(self, name: str, method: Callable[..., Awaitable[Any]]) -> Any:
        @functools.wraps(method)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self._hangs(name):
                await self._healed.wait()
            if self.broken:
                raise Unreachable(f"{name}: the backend is unreachable (test fault)")
            result = await method(*args, **kwargs)
            if self.after_claim is not None and name in CLAIM_CALLS:
                jobs = _claimed_jobs(name, result)
                if jobs:
                    await self.after_claim(name, jobs)
            return result

        return wrapper

    def break_(self) -> None:
        """Every call from now on fails at once."""
        self.broken = True

    def hang(self, *names: str) -> None:
        """Calls from now on wait until `heal()`, as on a server that stopped
        answering: those named, or every call when none is named."""
        self._hung = names
        self._healed.clear()

    def _hangs(self, name: str) -> bool:
        return not self._healed.is_set() and (not self._hung or name in self._hung)

    def heal(self) -> None:
        self.broken = False
        self._healed.set()
