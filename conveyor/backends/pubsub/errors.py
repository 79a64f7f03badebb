"""Google's errors turned into conveyor's, and which of them are worth
another try."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from conveyor.job import BackendMisconfiguredError, BackendUnavailableError

# How long transient failures are retried before a call gives up, seconds
# (module-level so tests can shorten it).
RETRY_SECONDS = 10.0


def _transient() -> Callable[[BaseException], bool]:
    from google.api_core import exceptions as gexc

    kinds = (
        gexc.ServiceUnavailable,
        gexc.Aborted,
        gexc.InternalServerError,
        gexc.ResourceExhausted,
        gexc.Unknown,
    )
    return lambda exc: isinstance(exc, kinds)


def retry() -> Any:
    """The retry of a call that does not wait: Pub/Sub's hiccups and an
    unreachable server, for up to RETRY_SECONDS."""
    from google.api_core.retry import AsyncRetry

    return AsyncRetry(
        predicate=_transient(), initial=0.1, maximum=2.0, multiplier=2.0, timeout=RETRY_SECONDS
    )


def translate(where: str, operation: str, target: str, exc: Exception) -> Exception:
    """conveyor's error for `exc` (NotFound and InvalidArgument are left as
    they are: callers know what they mean there)."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, auth_exc.TransportError):  # the token's refresh could not get out
        return BackendUnavailableError(f"Pub/Sub {operation} on {target}: {exc}")
    if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated | auth_exc.GoogleAuthError):
        return BackendMisconfiguredError(f"Pub/Sub {operation} on {target} refused: {exc}")
    if isinstance(
        exc,
        gexc.ServiceUnavailable
        | gexc.DeadlineExceeded
        | gexc.RetryError
        | gexc.InternalServerError
        | gexc.ResourceExhausted
        | gexc.Aborted
        | gexc.Unknown
        | OSError
        | asyncio.TimeoutError,
    ):
        return BackendUnavailableError(f"Pub/Sub at {where} unreachable ({operation}): {exc}")
    return exc
