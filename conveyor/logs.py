"""Making the worker's log lines visible when nothing else configured logging.

A worker run inside a web app (a FastAPI lifespan under uvicorn, a Django
management command, a script) often runs where nobody configured the root
logger: uvicorn configures only its own loggers. Python then drops INFO lines,
so the worker's "started" line and every `ctx.log` line vanished. When a
worker starts in such a process, conveyor gives its own logger one stderr
handler at INFO. Logging that the application configured is never touched.
"""

from __future__ import annotations

import logging

LOGGER = "conveyor"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        # Without a level of its own the root's default (WARNING) applies.
        ours.setLevel(logging.INFO)
