"""What a peer module provides; the harness drives every peer the same way."""

from __future__ import annotations

import abc
import importlib.metadata
from collections.abc import Callable
from typing import ClassVar


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Peer(abc.ABC):
    """One job system, seen from the producer (driver process) and from the
    worker process. A peer module defines one subclass named `PEER`.

    The task of every peer takes one float `t` and calls `peers.probe.hit(t)`.
    """

    name: ClassVar[str]
    #: how the worker runs (one process, concurrency 10): shown in the settings table
    settings: ClassVar[str]
    #: the batch call used for "enqueue/s batched", or None ("—") with the reason
    batch_call: ClassVar[str | None] = None
    no_batch_reason: ClassVar[str] = ""
    #: anything else a reader should know
    notes: ClassVar[str] = ""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.concurrency = concurrency
        #: the Redis DB or PostgreSQL schema the harness empties between phases
        #: (set by the driver; the same as `url` unless run.py was told otherwise)
        self.store_url: str | None = None

    @classmethod
    def for_url(cls, url: str) -> type[Peer]:
        """The class that runs against `url`: a peer whose library talks to
        another kind of server there (Celery on SQS) returns a subclass."""
        return cls

    @classmethod
    def missing(cls, url: str) -> str | None:
        """Why this peer cannot run against `url` here (shown in its row), or None."""
        return None

    @classmethod
    @abc.abstractmethod
    def versions(cls) -> dict[str, str]:
        """Library versions, e.g. {"arq": "0.28.0"}."""

    @classmethod
    def versions_for(cls, url: str) -> dict[str, str]:
        """The versions that matter when the peer runs against `url`."""
        return cls.versions()

    # -- producer side (driver process) --------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect the producer, creating the peer's tables if it has any; called
        again after the harness has emptied the store."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect the producer."""

    async def reset(self) -> None:  # noqa: B027 - optional hook
        """Delete what the peer stored outside the store the harness empties
        (only conveyor on a URL of its own, `--conveyor-url`, needs this)."""

    @abc.abstractmethod
    async def enqueue_one(self, t: float) -> None:
        """Enqueue one job whose task is `hit(t)`, the library's ordinary way."""

    async def enqueue_batch(self, ts: list[float]) -> None:
        """Enqueue `len(ts)` jobs with the library's batch call (if `batch_call`)."""
        raise NotImplementedError

    # -- worker side (worker process) ------------------------------------------------------

    @abc.abstractmethod
    def run_worker(self, started: Callable[[], None]) -> None:
        """Run one worker at `self.concurrency` until SIGTERM. Call `started()`
        right before entering the library's worker loop."""
