"""Backends chosen by URL: an explicit scheme table, imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from conveyor.backends.base import Backend
from conveyor.backends.url_options import redact, without_secrets
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
    try:
        backend: Backend = getattr(module, class_name)(url, **options)
    except Exception as exc:
        # The message quotes the URL (or a URL derived from it) to say what
        # is wrong; it reaches terminals, logs and error trackers, so the
        # passwords go, as they go from every URL conveyor prints.
        if len(exc.args) == 1 and isinstance(exc.args[0], str):
            shown = redact(exc.args[0], url)
            if shown != exc.args[0]:
                exc.args = (shown,)
                raise exc from None  # the chained cause may quote it too
        raise
    return backend


def store_from_url(store: str, owner: str, **options: Any) -> Backend:
    """The backend of a broker's `store=` URL; a refusal says whose store it is
    (its message quotes only the store's URL)."""
    try:
        return from_url(store, **options)
    except ValueError as exc:
        exc.args = (f"{exc} (the store= of {without_secrets(owner)!r})",)
        raise


__all__ = ["SCHEMES", "Backend", "from_url", "scheme_of", "store_from_url"]
