"""The caller's own connection, for `enqueue(..., connection=)`: the psycopg 3
connection inside whatever the caller holds, found by the public attributes
of each kind (no framework is imported):

* psycopg: a `psycopg.Connection` or `psycopg.AsyncConnection` itself;
* SQLAlchemy 2 (the `postgresql+psycopg` dialect): a `Session` (its
  `.connection()`), an `AsyncSession` (`await .connection()`), a
  `Connection` (`.connection`), an `AsyncConnection`
  (`await .get_raw_connection()`), or the pool's connection
  (`.driver_connection`);
* Django: its database wrapper, `django.db.connection` (`.connection`).

A framework's connection belongs to a thread (Django keeps one per thread)
or an event loop (SQLAlchemy's asyncio sessions): the blocking twins find it
with `in_this_thread` before they hand the call to their helper thread, and
`await app.enqueue(...)` finds it on the caller's own loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus

from conveyor.job import InvalidOptionError

# Layers of wrapping followed at most (a Session holds a Connection holds a
# pool's connection holds the driver's: 3).
_MAX_LAYERS: Final = 6

_MISSING: Final = object()

_ACCEPTED: Final = (
    "connection= takes a psycopg 3 connection (psycopg.Connection or AsyncConnection), "
    "a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection on the "
    "postgresql+psycopg dialect, or Django's django.db.connection"
)


async def in_this_loop(given: Any) -> psycopg.Connection[Any] | psycopg.AsyncConnection[Any]:
    """The psycopg connection inside `given`, awaiting what must be awaited
    (an asyncio session's connection), on the caller's event loop."""
    current = given
    for _ in range(_MAX_LAYERS):
        if isinstance(current, psycopg.Connection | psycopg.AsyncConnection):
            found: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] = usable(current)
            return found
        inner = _inner(current)
        if inner is None:
            break
        current = inner()
        if inspect.isawaitable(current):
            current = await current
    raise _not_a_connection(given, current)


def in_this_thread(given: Any) -> psycopg.Connection[Any]:
    """The blocking psycopg connection inside `given`, found in the calling
    thread (where a Django connection or a SQLAlchemy Session belongs), for
    the blocking twins. An asyncio connection or session is refused: it
    belongs to an event loop that the twin's helper thread does not run."""
    current = given
    for _ in range(_MAX_LAYERS):
        if isinstance(current, psycopg.AsyncConnection):
            break
        if isinstance(current, psycopg.Connection):
            checked: psycopg.Connection[Any] = usable(current)
            return checked
        inner = _inner(current)
        if inner is None or inspect.iscoroutinefunction(inner):
            break
        current = inner()
    if _is_async(current) or _is_async(given):
        raise InvalidOptionError(
            f"connection= is an asyncio connection ({type(given).__name__}): enqueue with"
            " `await app.enqueue(..., connection=...)` in its event loop; the _sync twins"
            " take a blocking connection"
        )
    raise _not_a_connection(given, current)


def _inner(wrapper: Any) -> Callable[[], Any] | None:
    """How to reach the next layer in: a call giving it (or an awaitable of
    it), None when `wrapper` is no wrapper this module knows."""
    if wrapper is None:
        return None
    # SQLAlchemy's pool connection (and its asyncio adaptation of psycopg's).
    driver = getattr(wrapper, "driver_connection", _MISSING)
    if driver is not _MISSING:
        return lambda: driver
    # SQLAlchemy's AsyncConnection (whose `.connection` refuses to be read).
    raw: Callable[[], Any] | None = getattr(wrapper, "get_raw_connection", None)
    if callable(raw):
        return raw
    inner = getattr(wrapper, "connection", _MISSING)
    if inner is _MISSING:
        return None
    if callable(inner):
        return inner  # a SQLAlchemy Session's or AsyncSession's .connection()
    return lambda: inner  # SQLAlchemy's Connection, Django's database wrapper


def _is_async(obj: Any) -> bool:
    if isinstance(obj, psycopg.AsyncConnection):
        return True
    for name in ("connection", "get_raw_connection"):
        method = getattr(type(obj), name, None)
        if inspect.iscoroutinefunction(method):
            return True
    return False


def usable(conn: Any) -> Any:
    """`conn` when a statement can run on it now; else a clear error (its
    transaction has failed, or it is closed)."""
    if conn.closed:
        raise InvalidOptionError("connection= is closed")
    if conn.info.transaction_status == TransactionStatus.INERROR:
        raise InvalidOptionError(
            "connection= is in a failed transaction (a statement in it raised): roll it"
            " back before enqueueing on it"
        )
    return conn


def _not_a_connection(given: Any, reached: Any) -> InvalidOptionError:
    if reached is None and given is not None and hasattr(given, "ensure_connection"):
        return InvalidOptionError(
            "connection=: Django's database connection is not open in this thread; enqueue"
            " inside `transaction.atomic()` (which opens it), on the thread that runs the"
            " transaction"
        )
    if reached is None:
        return InvalidOptionError(
            f"connection=: {type(given).__name__} holds no open connection"
            " (its .connection is None)"
        )
    what = type(given).__name__
    if reached is not given:
        what += f" (holding a {type(reached).__module__}.{type(reached).__name__})"
    return InvalidOptionError(f"{_ACCEPTED}; got {what}")
