"""The PostgreSQL backend's connections: a psycopg pool per event loop (the
blocking twins run on a loop of their own), the LISTEN connection idle
waiters share, the schema's migrations on first use, and how driver errors
become conveyor's. `PostgresConnection` is the base class of the backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conveyor._sync import leave_alone
from conveyor.backends.postgres.listener import Listener
from conveyor.backends.postgres.migrations import (
    BOOKKEEPING,
    LATEST,
    Migration,
    channel_of,
    migration_sql,
    pending,
)
from conveyor.backends.postgres.sql import Statements, wake_payload
from conveyor.backends.postgres.url import PostgresURL, parse_url
from conveyor.job import BackendMisconfiguredError, BackendUnavailableError

logger = logging.getLogger("conveyor.postgres")

# How long a call waits for a pooled connection before it counts the server
# as unreachable (the pool keeps trying to connect in the background).
POOL_WAIT: Final = 5.0
# How long a statement's answer may take by default (as the Redis backend's
# reply timeout): far beyond any of the worker's statements.
ANSWER_WITHIN: Final = 30.0

Params = Mapping[str, Any]


class PostgresConnection:
    """The connection side of `PostgresBackend` (its base class)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings: PostgresURL = parse_url(url)
        self.schema = self.settings.schema
        self.channel = channel_of(self.schema)
        self.q = Statements(sql.Identifier(self.schema).as_string(None))
        self._pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
        self._listeners: dict[asyncio.AbstractEventLoop, Listener] = {}
        self._migrated = False
        # Seconds a statement's answer may take (a statement over every job,
        # `stats` or `purge`, has none): a connection cut off without a word
        # or a frozen server must not hang a worker's heartbeat or claim.
        self.answer_within = ANSWER_WITHIN

    def __repr__(self) -> str:
        return f"<PostgresBackend {self.settings.display} schema={self.schema}>"

    def __str__(self) -> str:
        return f"PostgreSQL at {self.settings.display}, schema {self.schema!r}"

    # ------------------------------------------------------------------ pools

    async def _pool(self) -> AsyncConnectionPool:
        """This loop's pool, the schema created or checked on first use."""
        pool = await self._loop_pool()
        if not self._migrated:
            await self._ensure_schema(pool)
        return pool

    async def _loop_pool(self) -> AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = AsyncConnectionPool(
                self.settings.conninfo,
                min_size=1,
                max_size=self.settings.pool_size,
                kwargs=self._connection_options(),
                timeout=POOL_WAIT,
                open=False,
                name=f"conveyor-{self.schema}",
            )
            self._pools[loop] = pool
            await pool.open(wait=False)
        return pool

    def _connection_options(self) -> dict[str, Any]:
        if self.settings.prepared_statements:
            return {"autocommit": True}
        return {"autocommit": True, "prepare_threshold": None}

    @contextlib.asynccontextmanager
    async def _conn(self, bounded: bool = True) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; with `bounded`, what is done on it must be
        answered within `answer_within` seconds, or the statement is
        cancelled, the connection closed (psycopg does both when cancelled
        mid-statement; the pool drops a closed one) and BackendUnavailableError
        raised."""
        pool = await self._pool()
        deadline = self.answer_within if bounded else None
        try:
            async with pool.connection() as conn:
                try:
                    async with asyncio.timeout(deadline) as limit:
                        yield conn
                except TimeoutError as exc:
                    if not limit.expired():
                        raise
                    raise BackendUnavailableError(
                        f"PostgreSQL at {self.settings.display}: no answer within"
                        f" {deadline:g} s (the connection is dropped)"
                    ) from exc
        except PoolTimeout as exc:
            raise await self._timed_out(pool) from exc
        except psycopg.OperationalError as exc:
            if not connection_lost(exc):
                # The server canceled the statement (a lock or statement
                # timeout, a deadlock): it is there, and the pool is fine.
                raise BackendUnavailableError(
                    f"PostgreSQL at {self.settings.display}: {_first_line(exc)}"
                ) from exc
            # The server went away (or restarted): the other idle connections
            # are most likely dead too. Drop them now, so that the calls after
            # this one connect afresh rather than each failing once.
            with contextlib.suppress(Exception):
                await pool.check()
            raise self._unreachable(exc) from exc
        except (
            psycopg.errors.DuplicatePreparedStatement,
            psycopg.errors.InvalidSqlStatementName,
        ) as exc:
            raise self._pooled(exc) from exc

    def _pooled(self, exc: Exception) -> BackendMisconfiguredError:
        return BackendMisconfiguredError(
            f"PostgreSQL at {self.settings.display}: {str(exc).strip()}; psycopg's prepared"
            " statements do not survive a connection pooler in transaction mode (PgBouncer"
            " with pool_mode=transaction): add prepared_statements=false to the URL, or use"
            " session mode (workers need session mode or a direct connection: LISTEN)"
        )

    def _unreachable(self, exc: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"PostgreSQL at {self.settings.display} unreachable: {_first_line(exc)}"
        )

    async def _timed_out(self, pool: AsyncConnectionPool) -> BackendUnavailableError:
        """Why no pooled connection came within POOL_WAIT. The pool only logs
        its failed connects and the timeout says nothing of them: a wrong
        database name or password would read as an outage. So: every
        connection busy, or else one connect of our own for the server's words."""
        stats = pool.get_stats()
        if stats.get("pool_size", 0) >= pool.max_size and not stats.get("pool_available", 0):
            return BackendUnavailableError(
                f"PostgreSQL at {self.settings.display}: all {pool.max_size} pooled connections"
                f" stayed busy for {POOL_WAIT:g} s (the URL's pool_size)"
            )
        try:
            probe = await psycopg.AsyncConnection.connect(
                self.settings.conninfo, **self._connection_options()
            )
        except psycopg.Error as exc:
            return self._unreachable(exc)
        await probe.close()  # it answers now: the pool will connect in a moment
        return BackendUnavailableError(
            f"PostgreSQL at {self.settings.display} unreachable: no connection within"
            f" {POOL_WAIT:g} s"
        )

    async def _fetch(
        self, query: str, params: Params | None = None, *, bounded: bool = True
    ) -> list[tuple[Any, ...]]:
        async with self._conn(bounded) as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description is not None else []

    async def _read(
        self, query: str, params: Params | None = None, *, bounded: bool = True
    ) -> list[tuple[Any, ...]]:
        """`_fetch` for a statement that changes nothing, tried once more on a
        fresh connection when the first was cut (a server restart leaves the
        pool's idle connections dead; reading again cannot do harm)."""
        try:
            return await self._fetch(query, params, bounded=bounded)
        except BackendUnavailableError as exc:
            # PoolTimeout is an OperationalError too, but waiting as long
            # again for a pooled connection would only double the wait.
            cause = exc.__cause__
            if (
                not isinstance(cause, psycopg.OperationalError)
                or isinstance(cause, PoolTimeout)
                or not connection_lost(cause)  # canceled: it would wait the same again
            ):
                raise
        return await self._fetch(query, params, bounded=bounded)

    async def _write(
        self, query: str, params: Params | None = None, *, bounded: bool = True
    ) -> int:
        """Run one statement; how many rows it changed."""
        async with self._conn(bounded) as conn:
            cur = await conn.execute(query, params)
            return cur.rowcount

    async def _notify(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Wake the idle workers of these (queue, job name) pairs."""
        wakes = sorted({wake_payload(queue, name) for queue, name in pairs})
        if wakes:
            await self._write(self.q.notify, {"channel": self.channel, "wakes": wakes})

    def _listener(self) -> Listener:
        loop = asyncio.get_running_loop()
        listener = self._listeners.get(loop)
        if listener is None:
            listener = self._listeners[loop] = Listener(
                self.settings.conninfo, self.channel, self._send_probe, self.settings.display
            )
        return listener

    async def _send_probe(self, channel: str, payload: str) -> None:
        """The listener's self-test: a NOTIFY from the pool, as jobs' come."""
        await self._write("SELECT pg_notify(%(c)s, %(p)s)", {"c": channel, "p": payload})

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        try:
            async with self._conn() as conn:
                await conn.execute("SELECT 1")
        except BaseException:
            # The app does not count as opened, so it will not close us: the
            # pool's background workers must not outlive this loop.
            await self.close()
            raise

    async def close(self) -> None:
        """Close the pools and listeners of every loop that used this backend:
        those of another loop (the blocking twins' helper loop) on it."""
        current = asyncio.get_running_loop()
        loops = set(self._pools) | set(self._listeners)
        for loop in loops:
            pool, listener = self._pools.pop(loop, None), self._listeners.pop(loop, None)
            closing = _close(pool, listener)
            if loop is current:
                await closing
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(closing, loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(future), timeout=5)
            else:
                closing.close()

    def _after_fork_in_child(self) -> None:
        """The facade's fork hook, in the child: forget the parent's pools and
        listeners. Their sockets are the parent's: nothing may be sent on them
        (a pool's close would say goodbye on the parent's connections)."""
        leave_alone(*self._pools.values(), *self._listeners.values())
        self._pools, self._listeners = {}, {}

    async def clock(self) -> float:
        rows = await self._read("SELECT extract(epoch FROM statement_timestamp())::float8")
        now: float = rows[0][0]
        return now

    # ------------------------------------------------------------------ migrations

    async def schema_version(self) -> int:
        """The version the schema is at (0: no schema yet)."""
        pool = await self._loop_pool()
        try:
            async with pool.connection() as conn:
                return await _applied(conn, self.schema)
        except PoolTimeout as exc:
            raise await self._timed_out(pool) from exc
        except psycopg.OperationalError as exc:
            raise self._unreachable(exc) from exc

    async def pending_sql(self) -> list[tuple[int, str, list[str]]]:
        """The migrations this schema still needs, with their SQL as it would
        run (for `conveyor migrate --dry-run`, or a DBA to run by hand): the
        bookkeeping table first on a new schema, each migration's record
        after it."""
        applied = await self.schema_version()
        return migration_sql(self.schema, min(applied, LATEST))

    def _names(self) -> tuple[str, str]:
        """The schema as a quoted identifier and the channel as a literal."""
        schema = sql.Identifier(self.schema).as_string(None)
        return schema, sql.Literal(self.channel).as_string(None)

    async def migrate(self) -> list[int]:
        """Apply the pending migrations; return the versions applied."""
        pool = await self._loop_pool()
        try:
            async with pool.connection() as conn:
                done = await self._apply(conn)
        except PoolTimeout as exc:
            raise await self._timed_out(pool) from exc
        except psycopg.OperationalError as exc:
            raise self._unreachable(exc) from exc
        self._migrated = True
        return [m.version for m in done]

    async def _ensure_schema(self, pool: AsyncConnectionPool) -> None:
        try:
            async with pool.connection() as conn:
                applied = await _applied(conn, self.schema)
                if applied == LATEST:
                    self._migrated = True
                    return
                if applied > LATEST:
                    raise BackendUnavailableError(
                        f"the conveyor schema {self.schema!r} at {self.settings.display} is at"
                        f" version {applied}, newer than this conveyor knows ({LATEST}):"
                        " upgrade conveyor"
                    )
                if not self.settings.migrate:
                    raise BackendUnavailableError(
                        f"the conveyor schema {self.schema!r} at {self.settings.display} is at"
                        f" version {applied} and this conveyor needs {LATEST}; run"
                        " `conveyor migrate --url ...` (the URL says migrate=false)"
                    )
                await self._apply(conn)
        except PoolTimeout as exc:
            raise await self._timed_out(pool) from exc
        except psycopg.OperationalError as exc:
            raise self._unreachable(exc) from exc
        self._migrated = True

    async def _apply(self, conn: psycopg.AsyncConnection[Any]) -> list[Migration]:
        s, channel = self._names()
        async with conn.transaction():
            # Processes starting together take turns; the second finds the
            # work done. The lock goes with the transaction.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"conveyor.migrate.{self.schema}",)
            )
            for statement in BOOKKEEPING:
                await conn.execute(statement.format(s=s))
            applied = await _applied(conn, self.schema)
            if applied > LATEST:
                raise BackendUnavailableError(
                    f"the conveyor schema {self.schema!r} is at version {applied},"
                    f" newer than this conveyor knows ({LATEST}): upgrade conveyor"
                )
            done = pending(applied)
            for migration in done:
                for statement in migration.render(s, channel):
                    await conn.execute(statement)
                await conn.execute(
                    f"INSERT INTO {s}.migrations (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
        if done:
            logger.info(
                "PostgreSQL schema %r migrated to version %d", self.schema, done[-1].version
            )
        return done


async def _applied(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (sql.Identifier(schema, "migrations").as_string(None),),
    )
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    table = sql.Identifier(schema, "migrations")
    cur = await conn.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(table))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _close(pool: AsyncConnectionPool | None, listener: Listener | None) -> None:
    if listener is not None:
        await listener.stop()
    if pool is not None:
        await pool.close()


# SQLSTATEs of a connection that is gone: class 08 (connection exception) and
# the server's shutdowns (admin, crash, still starting up).
_GONE_STATES: Final = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(exc: psycopg.OperationalError) -> bool:
    """Whether the connection failed (no SQLSTATE: cut on the client's side;
    class 08; a server shutdown), not the statement (psycopg raises a lock or
    statement timeout, a deadlock or a serialization failure as an
    OperationalError too)."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _GONE_STATES


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
