"""Backends chosen by URL: an explicit scheme table, imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from conveyor.backends.base import Backend
from conveyor.job import BackendUnavailableError, UnsupportedURLError

# scheme -> (module, class, pip extra that provides its driver)
SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("conveyor.backends.memory", "MemoryBackend", None),
    "sqlite": ("conveyor.backends.sqlite", "SQLiteBackend", None),
    "redis": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "rediss": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "unix": ("conveyor.backends.redis", "RedisBackend", "redis"),  # Redis's unix socket
    "redis+sentinel": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "rediss+sentinel": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "postgresql": ("conveyor.backends.postgres", "PostgresBackend", "postgres"),
    "postgres": ("conveyor.backends.postgres", "PostgresBackend", "postgres"),
    "sqs": ("conveyor.backends.sqs", "sqs_backend", "sqs"),
    "sqs+https": ("conveyor.backends.sqs", "sqs_backend", "sqs"),
    "sqs+http": ("conveyor.backends.sqs", "sqs_backend", "sqs"),
    "pubsub": ("conveyor.backends.pubsub", "pubsub_backend", "gcp"),
    "cloudtasks": ("conveyor.backends.cloudtasks", "CloudTasksBackend", "gcp"),
    "bullmq": ("conveyor.backends.bullmq", "BullMQBackend", "bullmq"),
}


def scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise UnsupportedURLError(
            f"not a backend URL: {url!r} (expected e.g. sqlite:///conveyor.db or memory://)"
        )
    return scheme.lower()


def from_url(url: str, **options: Any) -> Backend:
    """Build (but do not open) the backend for `url`."""
    scheme = scheme_of(url)
    try:
        module_name, class_name, extra = SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise UnsupportedURLError(
            f"unsupported backend URL scheme {scheme + '://'!r} in {url!r}; known: {known}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (install it with: pip install 'conveyor[{extra}]')" if extra else ""
        raise BackendUnavailableError(
            f"the {scheme}:// backend needs a driver that is not installed: {exc}{hint}"
        ) from exc
    backend: Backend = getattr(module, class_name)(url, **options)
    return backend


__all__ = ["SCHEMES", "Backend", "from_url", "scheme_of"]
