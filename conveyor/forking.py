"""Fork safety: process-wide hooks (`os.register_at_fork`) that let every
live app's backend quiesce before a fork and start afresh in the child."""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.app")

# Every live app, weakly: the process-wide fork hooks below reach them without
# keeping them alive (one registration per process, not one per app).
_LIVE_APPS: weakref.WeakSet[Conveyor] = weakref.WeakSet()
# The backends readied for the fork under way (each once: apps may share one).
_READIED: list[Backend] = []


def track(app: Conveyor) -> None:
    """Look after `app` at every fork (weakly: the app is not kept alive)."""
    _LIVE_APPS.add(app)


def _backends() -> list[Backend]:
    """Every live app's backends (jobs, and the locks' and cache's own), each once."""
    found = {
        id(backend): backend
        for app in list(_LIVE_APPS)
        for backend in [app.backend, *app.services.own()]
    }
    return list(found.values())


def _fork_hook(backend: Backend, name: str) -> bool:
    """Call the backend's optional fork method `name`; a failure is logged,
    not raised (os.fork would ignore it, and the other backends need theirs)."""
    method = getattr(backend, name, None)
    if method is None:  # a backend with no thread or connection to look after
        return True
    try:
        method()
    except Exception:
        logger.exception("%s of %r failed", name, backend)
        return False
    return True


def _before_fork() -> None:
    """Let each backend quiesce its threads, so the child copies no call half done."""
    _READIED[:] = [b for b in _backends() if _fork_hook(b, "_before_fork")]


def _after_fork_in_parent() -> None:
    for backend in _READIED:
        _fork_hook(backend, "_after_fork_in_parent")
    _READIED.clear()


def _after_fork_in_child() -> None:
    """The child has only the forking thread: every app's helper loop and each
    backend's threads and connections are the parent's. Drop them (without
    closing what the parent still uses) so that the next call starts afresh."""
    _READIED.clear()
    for app in list(_LIVE_APPS):
        app._after_fork_in_child()
    for backend in _backends():
        _fork_hook(backend, "_after_fork_in_child")


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    # Before-fork hooks run in the reverse order of registration, and the
    # thread pool's own hook takes a lock that ThreadPoolExecutor.submit needs
    # (the SQLite backend submits from its hook): register after it, so that
    # ours run first.
    import concurrent.futures.thread  # noqa: F401

    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
