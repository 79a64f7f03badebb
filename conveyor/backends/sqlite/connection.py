"""The SQLite backend's connection plumbing: URL options, opening the file and
its schema, the connection thread that runs every call (`_call`), the watch
connection idle waiters poll, and the fork hooks. `SQLiteConnection` is the
base class of the backend; see backend.py for the design."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor._sync import leave_alone
from conveyor.backends._notify import Notifier
from conveyor.backends.sqlite.migrations import META, column_statements, schema_statements
from conveyor.backends.sqlite.sql import SCHEMA_VERSION
from conveyor.backends.sqlite.writer import (
    ConnectionThread,
    Lane,
    LockAwareConnection,
    write_transaction,
)
from conveyor.job import BackendUnavailableError, InvalidOptionError

logger = logging.getLogger("conveyor.sqlite")

P = ParamSpec("P")
T = TypeVar("T")

# How long a fork waits for the connection thread to finish the call it runs
# (a call never waits for the write lock inside the thread, so this is short).
_FORK_PARK_WAIT: Final = 30.0

_SYNCHRONOUS: Final = frozenset({"off", "normal", "full", "extra"})


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    """The database path (absolute) and the query options of a sqlite:// URL."""
    parts = urlsplit(url)
    hint = "use sqlite:///relative/path.db (three slashes) or sqlite:////absolute/path.db (four)"
    if parts.scheme.lower() != "sqlite":
        raise InvalidOptionError(f"not a sqlite:// URL: {url!r}")
    in_memory = (
        f"{url!r}: an in-memory SQLite database is not supported (each connection "
        "would have a database of its own); use memory:// instead"
    )
    if parts.netloc:
        if parts.netloc == ":memory:":
            raise InvalidOptionError(in_memory)
        raise InvalidOptionError(f"{url!r} names a host, but SQLite is a local file; {hint}")
    path = unquote(parts.path[1:])  # the slash after the empty host is not part of the path
    if path == ":memory:" or path.startswith("file::memory:"):
        raise InvalidOptionError(in_memory)
    if not path:
        raise InvalidOptionError(f"{url!r} has no database file path; {hint}")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        options[name.lower()] = value
    return os.path.abspath(path), options


def _quote_path(path: str) -> str:
    # In a file: URI, '?' and '#' would start the query or fragment and '%'
    # an escape; nothing else needs quoting for SQLite's URI parser.
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _explain(exc: sqlite3.DatabaseError) -> str:
    message = str(exc)
    if "not a database" in message:
        return "the file is not a SQLite database"
    if "readonly" in message:
        return "the database is read-only (check file and directory permissions)"
    if "unable to open" in message:
        return "unable to open the file (check the path and permissions)"
    if "locked" in message or "busy" in message:
        return (
            "the database is busy: another connection held its lock for longer than "
            "busy_timeout (raise it with ?busy_timeout=MILLISECONDS, or find the "
            "process holding a long transaction)"
        )
    return message


def _remove_created(path: str) -> None:
    """Remove what a failed open of a new database created, so a typo or a
    bad location leaves no stray files behind. Only empty files: if another
    process has written a database there meanwhile, it stays."""
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > 0:
            return
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(OSError):
            os.remove(name)


class SQLiteConnection:
    """The connection side of `SQLiteBackend` (its base class)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = _parse_url(url)
        self._busy_timeout_ms = 30_000
        self._synchronous = "normal"
        for name, value in options.items():
            if name == "busy_timeout":
                try:
                    self._busy_timeout_ms = int(value)
                except ValueError:
                    self._busy_timeout_ms = -1
                if self._busy_timeout_ms < 0:
                    raise InvalidOptionError(
                        f"{url!r}: busy_timeout must be a whole number of milliseconds >= 0"
                    )
            elif name == "synchronous":
                if value.lower() not in _SYNCHRONOUS:
                    raise InvalidOptionError(
                        f"{url!r}: synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}"
                    )
                self._synchronous = value.lower()
            else:
                raise InvalidOptionError(
                    f"{url!r}: unknown option {name!r} (known: busy_timeout, synchronous)"
                )
        self._notifier = Notifier()
        self._state_lock = threading.Lock()
        self._thread: ConnectionThread | None = None
        self._opened: Future[None] | None = None
        # Owned by the backend thread: a counter bumped after every commit
        # that makes work available, which lets a waiter see a wake-up that
        # raced ahead of its registration.
        self._wakeups = 0
        # Used from event-loop threads, hence the lock.
        self._watch_lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        with self._state_lock:
            if self._opened is None:
                self._thread = ConnectionThread(
                    "conveyor-sqlite", f"SQLite database {self.path}", self._busy_timeout_ms / 1000
                )
                self._opened = self._thread.start(self._connect)
            opened, thread = self._opened, self._thread
        try:
            await asyncio.wrap_future(opened)
        except Exception:
            # Leave the backend closed, so a later call tries afresh. (A
            # cancelled caller is not a failure: the open goes on, and the
            # next call waits for the same future.)
            with self._state_lock:
                if self._opened is opened:
                    self._opened = self._thread = None
            if thread is not None:
                thread.stop(None)
                thread.join()  # idle now: a quick join, no thread left behind
            raise

    async def close(self) -> None:
        with self._state_lock:
            thread, self._thread, self._opened = self._thread, None, None
        if thread is None:
            return
        # Queued calls (from any loop) run first; then the connection closes.
        await asyncio.wrap_future(thread.stop(self._disconnect))
        thread.join()  # the thread is ending by now: a quick join

    def _connect(self) -> LockAwareConnection:
        path = self.path
        if os.path.isdir(path):
            raise self._unavailable("the path is a directory")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            reason = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise self._unavailable(f"directory {parent} {reason}")
        existed = os.path.exists(path)
        if existed and not os.access(path, os.R_OK | os.W_OK):
            raise self._unavailable("permission denied (the file must be readable and writable)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise self._unavailable(
                f"directory {parent} is not writable (SQLite keeps its -wal and -shm files there)"
            )
        conn: LockAwareConnection | None = None
        try:
            # mode=rw for an existing file: never silently replace a file that
            # vanished in the meantime with an empty database.
            mode = "rw" if existed else "rwc"
            uri = f"file:{_quote_path(path)}?mode={mode}"
            conn = sqlite3.connect(
                uri,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=0,
                factory=LockAwareConnection,
            )
            # While opening, SQLite's own busy handler waits for the lock (no
            # other call can run before the connection exists); afterwards
            # the thread waits for it without blocking (writer.py).
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._create_schema(conn)
            conn.execute("PRAGMA busy_timeout = 0")
            # A second connection only for PRAGMA data_version (see
            # _data_version); it never writes and never waits for a lock.
            watch = sqlite3.connect(
                f"file:{_quote_path(path)}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=0,
            )
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if not existed:
                _remove_created(path)
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._unavailable(_explain(exc)) from exc
            raise
        with self._watch_lock:
            self._watch = watch
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with write_transaction(conn):
            conn.execute(META)
            row = conn.execute(
                "SELECT value FROM conveyor_meta WHERE key = 'schema_version'"
            ).fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise self._unavailable(
                    f"schema version {version} was written by a newer conveyor;"
                    f" this one knows version {SCHEMA_VERSION}"
                )
            for statement in schema_statements(version):
                conn.execute(statement)
            for statement in column_statements(conn):
                conn.execute(statement)

    def _disconnect(self, conn: sqlite3.Connection) -> None:
        with self._watch_lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
        conn.close()

    def _unavailable(self, reason: str) -> BackendUnavailableError:
        return BackendUnavailableError(f"cannot open SQLite database {self.path}: {reason}")

    # ------------------------------------------------------------ plumbing

    async def _call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `fn(conn, ...)` on the backend thread, in turn."""
        thread = await self._ensure_open()
        return await asyncio.wrap_future(
            thread.submit(lambda conn: fn(conn, *args, **kwargs), Lane.OTHER)
        )

    async def _lease_call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `fn(conn, ...)` on the backend thread before any queued `_call`:
        for calls that keep leases alive (heartbeats, acknowledgements)."""
        thread = await self._ensure_open()
        return await asyncio.wrap_future(
            thread.submit(lambda conn: fn(conn, *args, **kwargs), Lane.LEASE)
        )

    async def _ensure_open(self) -> ConnectionThread:
        opened = self._opened
        if opened is None or not opened.done() or opened.exception() is not None:
            await self.open()
        thread = self._thread
        if thread is None:  # closed by another task meanwhile
            raise BackendUnavailableError(f"SQLite database {self.path} is closed")
        return thread

    async def clock(self) -> float:
        return time.time()  # the host's: every process using the file runs here

    def _wake(self) -> None:
        self._notifier.notify()

    def _data_version(self) -> int | None:
        """PRAGMA data_version of the watch connection, read on the caller's
        thread: it only reads the WAL index in shared memory (a few
        microseconds, never waits: busy_timeout is 0), which is what lets an
        idle waiter poll often without a thread hop per poll. None when it
        cannot tell (busy, closed): the caller then probes."""
        with self._watch_lock:
            watch = self._watch
            if watch is None:
                return None
            try:
                version: int = watch.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                return None
            return version

    # ------------------------------------------------------------ fork
    #
    # The facade's fork hooks. A child has no connection thread, so it must
    # open its own connections; and it must close its copies of the parent's
    # first. SQLite keeps its POSIX lock bookkeeping per process and file: new
    # connections next to inherited ones would share it and take no real
    # locks, and the parent's last close could then checkpoint and delete the
    # WAL under the child, losing the child's later writes. Closing the copies
    # writes nothing and leaves the parent's locks alone, provided no call was
    # half done at the fork (a transaction open, an SQLite mutex held): hence
    # the connection thread is parked between two calls while the process forks.

    _parked: ConnectionThread | None = None
    _parked_ok = False

    def _before_fork(self) -> None:
        with self._state_lock:
            thread = self._thread
        self._parked, self._parked_ok = thread, False
        if thread is not None:
            self._parked_ok = thread.park(_FORK_PARK_WAIT)
        self._watch_lock.acquire()  # nor a data_version read half done

    def _after_fork_in_parent(self) -> None:
        self._watch_lock.release()
        if self._parked is not None and self._parked_ok:
            self._parked.unpark()
        self._parked, self._parked_ok = None, False

    def _after_fork_in_child(self) -> None:
        thread = self._parked
        conn = thread.inherited_connection() if thread is not None else None
        inherited = [c for c in (conn, self._watch) if c is not None]
        safe = thread is None or self._parked_ok
        for c in inherited:
            if safe:
                c.close()
            else:  # a call may be half done in it: closing could hang or write
                leave_alone(c)
        if inherited and not safe:
            logger.warning(
                "forked while the SQLite backend of %s was busy: the child left the "
                "parent's connections open; close the parent's app last",
                self.path,
            )
        if thread is not None:
            leave_alone(thread)  # its locks may be held by threads that are gone
        self._watch = None
        self._thread = self._opened = None  # the parent's thread, not copied
        self._parked, self._parked_ok = None, False
        self._state_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._notifier = Notifier()  # its waiters are the parent's loops
