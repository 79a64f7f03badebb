"""The SQLite backend's connection thread, and what waiting for the write lock
may cost the leases.

sqlite3 calls block, so each backend object owns one thread that owns its
connection and runs the calls handed to it. Two rules keep a lease-keeping
call (a heartbeat, an acknowledgement, a lock extension) from waiting behind
another call that waits for the file's write lock:

* The thread never blocks on the lock. The connection's busy_timeout is 0: a
  write that finds the lock taken fails at once, stays in the queue and is
  tried again a few milliseconds later, until its own deadline (the URL's
  `busy_timeout`) passes. Meanwhile the thread serves newer calls.
* Calls run in two lanes. While a call of the LEASE lane is queued, no call
  of the OTHER lane is tried, so when the lock frees the heartbeat goes
  first, even if an enqueue has waited longer.

A heartbeat still has to wait for the lock itself when another connection
holds it. `write_transaction` makes up for that wait (see `_lock_taken`): a
lease only runs while the database accepts writes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import enum
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Final, TypeVar

from conveyor.job import BackendUnavailableError

T = TypeVar("T")

# How long a write that found the lock taken waits before its next try (the
# last pause repeats). Short: an idle try costs a few microseconds, and the
# sooner a waiter sees the lock free, the smaller the window in which another
# process, that did not wait, can write first (see `_lock_taken`).
_LOCK_POLL_PAUSES: Final = (0.001, 0.002, 0.005)

# A stall of the write lock shorter than this is not made up for: leases
# absorb it (they are many heartbeat intervals long), and making up for every
# few-millisecond wait would cost an UPDATE of the running jobs on every
# contended write.
_STALL_THRESHOLD: Final = 0.25

# Each connection records the time of its write transactions in the meta
# table at most this often, so the record is at most this stale: enough to
# tell a stall (no commit for seconds) from contention (commits every few
# milliseconds), at the cost of one small row write per 100 ms per process.
_RECORD_EVERY: Final = 0.1

_LAST_WRITE_GET: Final = "SELECT CAST(value AS REAL) FROM conveyor_meta WHERE key = 'last_write'"
_LAST_WRITE_PUT: Final = (
    "INSERT INTO conveyor_meta (key, value) VALUES ('last_write', ?1)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
# Time stood still for the running jobs whose lease was live when the stall
# began (?2): their leases move on by the stall's length (?1). A lease that
# had already run out before it was lost for a reason of its own.
_PUSH_LEASES: Final = (
    "UPDATE conveyor_jobs SET lease_until = lease_until + ?1"
    " WHERE state = 'running' AND lease_until > ?2"
)


class LockAwareConnection(sqlite3.Connection):
    """A connection that remembers how it got (or did not get) the write lock.

    Owned by the connection thread; times are wall-clock (`time.time()`), the
    clock leases are measured by."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The first refused try since this connection last committed a write.
        self.refused_since: float | None = None
        # Of the current write transaction: when it got the lock, and since
        # when it had been waiting for it (None: it got it at once).
        self.taken_at = 0.0
        self.waited_since: float | None = None
        # When this connection last stored the time of a write, and the time
        # the current transaction stores (None: not this one).
        self.recorded_at = 0.0
        self.recording: float | None = None
        # Of the current write transaction: from when its hold of the lock is
        # not yet made up for (`_before_commit` makes up for what came before).
        self.unmade_since = 0.0
        # A hold not yet made up for, (began, length): the process was frozen
        # during a COMMIT. The next write transaction of this connection makes
        # up for it first; `owed_settling` marks the one doing so.
        self.owed: tuple[float, float] | None = None
        self.owed_settling = False


def is_lock_error(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)
    return "locked" in message or "busy" in message


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, holding the write lock from its first statement.

    Taking the lock up front means two connections never both hold a read
    snapshot and then try to upgrade it, which SQLite can only resolve by
    failing one of them at once (SQLITE_BUSY_SNAPSHOT)."""
    # Read before BEGIN: a process frozen between taking the lock and reading
    # the clock held the lock all along, and the hold must count from here.
    asked_at = time.time()
    conn.execute("BEGIN IMMEDIATE")
    aware = conn if isinstance(conn, LockAwareConnection) else None
    try:
        if aware is not None:
            _lock_taken(aware)
            aware.taken_at = min(aware.taken_at, asked_at)
        yield
        if aware is not None:
            _before_commit(aware)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if aware is not None:
            aware.owed_settling = False
        raise
    conn.execute("COMMIT")
    if aware is not None:
        aware.refused_since = None
        if aware.recording is not None:
            aware.recorded_at = aware.recording
        if aware.owed_settling:
            aware.owed, aware.owed_settling = None, False
        _after_commit(aware)


def waited_for_lock_after(conn: sqlite3.Connection, now: float) -> float:
    """How long the current write transaction waited for the lock after `now`.

    A lease the transaction sets as `now + lease` adds this, so that it runs
    from when it was stored: a heartbeat that waited out a stall must not
    store a lease that ran out during the stall."""
    if not isinstance(conn, LockAwareConnection) or conn.waited_since is None:
        return 0.0
    return max(0.0, conn.taken_at - max(now, conn.waited_since))


def _lock_taken(conn: LockAwareConnection) -> None:
    """Make up for a stall this connection waited through.

    The stall is the time during which this connection's writes were refused
    and nobody committed a write: from the later of its first refused try and
    the last recorded write (of any connection), to now. Throughout it the
    lock was held by a transaction that did not commit (a frozen or dead
    process, a long transaction), so no heartbeat could be stored: every lease
    that was live when the stall began moves on by its length."""
    now = time.time()
    conn.taken_at, conn.waited_since = now, conn.refused_since
    conn.recording = None
    if conn.owed is not None:
        began, length = conn.owed
        conn.execute(_PUSH_LEASES, (length, began))
        _record(conn, now)
        conn.owed_settling = True
    since = conn.refused_since
    if since is None or now - since < _STALL_THRESHOLD:
        return
    row = conn.execute(_LAST_WRITE_GET).fetchone()
    began = since if row is None or row[0] is None else max(since, row[0])
    if now - began >= _STALL_THRESHOLD:
        conn.execute(_PUSH_LEASES, (now - began, began))
        _record(conn, now)  # the stall is made up for: later waiters start from here


def _before_commit(conn: LockAwareConnection) -> None:
    """Make up for the time this transaction itself held the lock, if that was
    long (its process was frozen, or it had much to do): nobody else could
    write meanwhile. Then record the time of this write."""
    now = time.time()
    held = now - conn.taken_at
    conn.unmade_since = conn.taken_at
    if held >= _STALL_THRESHOLD:
        conn.execute(_PUSH_LEASES, (held, conn.taken_at))
        _record(conn, now)
        conn.unmade_since = now
    elif conn.recording is None and now - conn.recorded_at >= _RECORD_EVERY:
        _record(conn, now)


def _after_commit(conn: LockAwareConnection) -> None:
    """Make up for a freeze between `_before_commit` and the end of COMMIT
    (SIGSTOP while SQLite writes the WAL): the lock was held all along, yet
    nothing was pushed back for it. This connection's next transaction, very
    likely the next to get the lock (waiters poll every few milliseconds, and
    one that gets it first makes up for the stall itself, see `_lock_taken`),
    would otherwise be a lease recovery due since before the freeze, finding
    the leases of workers that could not write meanwhile run out. So make up
    for it at once, in a transaction of its own; if the lock is taken, the
    next write transaction of this connection does it first."""
    late = time.time() - conn.unmade_since
    if late < _STALL_THRESHOLD:
        return
    conn.owed = (conn.unmade_since, late)
    conn.unmade_since = time.time()  # the settling transaction's own hold starts afresh
    # On an error (the lock is taken), owed stays for the next transaction.
    with contextlib.suppress(sqlite3.Error), write_transaction(conn):
        pass


def _record(conn: LockAwareConnection, now: float) -> None:
    conn.execute(_LAST_WRITE_PUT, (repr(now),))
    conn.recording = now


class Lane(enum.IntEnum):
    """Which calls go first: LEASE calls keep leases alive."""

    LEASE = 0
    OTHER = 1


@dataclasses.dataclass(eq=False)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]
    deadline: float | None = None  # monotonic; set when the lock is first refused
    retry_at: float = 0.0  # monotonic
    refusals: int = 0


class ConnectionThread:
    """One thread, one connection, calls run one at a time in lane order.

    `start(connect)` opens the connection on the thread; `submit(fn, lane)`
    runs `fn(conn)` there; `stop(disconnect)` lets the queued calls finish,
    then closes the connection and ends the thread. A call that finds the
    write lock taken is tried again until `lock_wait` seconds have passed
    since its first refusal, then fails with BackendUnavailableError; other
    storage errors fail it at once, as BackendUnavailableError too.
    """

    def __init__(self, name: str, label: str, lock_wait: float) -> None:
        self._label = label  # "SQLite database /path", for error messages
        self._lock_wait = lock_wait
        self._lanes: tuple[deque[_Call], ...] = tuple(deque() for _ in Lane)
        self._cond = threading.Condition()
        self._closing = False
        self._conn: sqlite3.Connection | None = None
        self._disconnect: Callable[[sqlite3.Connection], None] | None = None
        self._stopped: Future[None] = Future()
        self._name = name
        self._thread: threading.Thread | None = None
        # Held while a call runs: a fork waits for it (see `park`), so the
        # child never inherits a connection with a call half done in it.
        self._busy = threading.Lock()

    def start(self, connect: Callable[[], sqlite3.Connection]) -> Future[None]:
        """Start the thread; it first runs `connect` (the returned future says
        how that went), then the calls."""
        opened: Future[None] = Future()
        # A daemon thread, stopped (after its queued calls) at interpreter
        # exit by _stop_all: a backend that was never closed must not keep
        # the process alive, nor lose a call it accepted.
        self._thread = threading.Thread(
            target=self._run, args=(connect, opened), name=self._name, daemon=True
        )
        _LIVE.add(self)
        self._thread.start()
        return opened

    def submit(self, fn: Callable[[sqlite3.Connection], T], lane: Lane) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._closing:
                future.set_exception(BackendUnavailableError(f"{self._label} is closed"))
                return future
            self._lanes[lane].append(_Call(fn, future))
            self._cond.notify()
        return future

    def stop(self, disconnect: Callable[[sqlite3.Connection], None] | None) -> Future[None]:
        """Refuse new calls; once the queued ones are done, `disconnect` the
        connection (if one was opened) and end the thread."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._disconnect = disconnect
                self._cond.notify()
        return self._stopped

    def join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # ------------------------------------------------------------ fork

    def park(self, timeout: float) -> bool:
        """Before a fork: wait (up to `timeout`) until no call is running and
        keep the next from starting until `unpark`. False: still busy."""
        return self._busy.acquire(timeout=timeout)

    def unpark(self) -> None:
        """After the fork, in the parent: let the calls run again."""
        self._busy.release()

    def inherited_connection(self) -> sqlite3.Connection | None:
        """In a forked child: the copy of the parent's connection (the thread
        that owned it does not exist here), for the child to close."""
        return self._conn

    # ------------------------------------------------------------ the thread

    def _run(self, connect: Callable[[], sqlite3.Connection], opened: Future[None]) -> None:
        try:
            self._conn = connect()
        except BaseException as exc:
            opened.set_exception(exc)
        else:
            opened.set_result(None)
        while (call := self._next()) is not None:
            with self._busy:
                self._attempt(call)
        try:
            if self._conn is not None and self._disconnect is not None:
                self._disconnect(self._conn)
            self._conn = None
        except BaseException as exc:
            self._stopped.set_exception(exc)
        else:
            self._stopped.set_result(None)
        finally:
            _LIVE.discard(self)

    def _next(self) -> _Call | None:
        """The call to try next (left at the head of its lane until done), or
        None once stopping with nothing left."""
        with self._cond:
            while True:
                lane = self._lanes[Lane.LEASE] or self._lanes[Lane.OTHER]
                if lane:
                    call = lane[0]
                    pause = call.retry_at - time.monotonic()
                    if pause <= 0:
                        return call
                    self._cond.wait(pause)  # a new (LEASE) call may come first
                elif self._closing:
                    return None
                else:
                    self._cond.wait()

    def _attempt(self, call: _Call) -> None:
        if call.refusals == 0 and not call.future.set_running_or_notify_cancel():
            self._done(call)  # its caller gave up before it started
            return
        conn = self._conn
        if conn is None:
            self._done(call, error=BackendUnavailableError(f"{self._label} is not open"))
            return
        try:
            result = call.fn(conn)
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:  # e.g. a failed COMMIT
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if is_lock_error(exc) and self._wait_for_lock(call, conn):
                return
            self._done(call, error=self._unavailable(exc))
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError) as exc:
            self._done(call, error=exc)  # bad input or a bug: not the storage's fault
        except sqlite3.DatabaseError as exc:  # corrupt file, disk I/O error, ...
            self._done(call, error=self._unavailable(exc))
        except BaseException as exc:
            self._done(call, error=exc)
        else:
            self._done(call, result=result)

    def _wait_for_lock(self, call: _Call, conn: sqlite3.Connection) -> bool:
        """Leave `call` queued for another try, unless its time is up."""
        now = time.monotonic()
        if isinstance(conn, LockAwareConnection) and conn.refused_since is None:
            conn.refused_since = time.time()
        if call.deadline is None:
            call.deadline = now + self._lock_wait
        if now >= call.deadline:
            return False
        pause = _LOCK_POLL_PAUSES[min(call.refusals, len(_LOCK_POLL_PAUSES) - 1)]
        call.retry_at = min(now + pause, call.deadline)
        call.refusals += 1
        return True

    def _done(self, call: _Call, *, result: Any = None, error: BaseException | None = None) -> None:
        with self._cond:
            for lane in self._lanes:
                if lane and lane[0] is call:
                    lane.popleft()
                    break
        if call.future.cancelled():
            return
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)

    def _unavailable(self, exc: sqlite3.Error) -> BackendUnavailableError:
        error = BackendUnavailableError(f"{self._label}: {exc}")
        error.__cause__ = exc
        return error


# Threads still running, stopped at interpreter exit after their queued calls
# (as concurrent.futures does for its workers): an acknowledgement queued just
# before exit is still stored.
_LIVE: weakref.WeakSet[ConnectionThread] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    threads = list(_LIVE)
    for thread in threads:
        thread.stop(None)
    for thread in threads:
        thread.join()


def _forget_all() -> None:
    # In a forked child the threads do not exist (and a condition's lock may
    # have been held by one of them at the fork): never touch them there.
    _LIVE.clear()


os.register_at_fork(after_in_child=_forget_all)
