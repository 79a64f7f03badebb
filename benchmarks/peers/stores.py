"""Where a peer's data lives, and how the harness empties it between phases.

* Redis suite: a logical DB of its own, emptied with FLUSHDB; a marker key
  written after every flush tells later runs the DB is the harness's.
* PostgreSQL suite: a schema of its own in a shared database, named
  `bench_<peer>_<random>` by run.py and given in the peer's URL as
  `?schema=NAME`. run.py creates it (plain CREATE SCHEMA, so an existing
  schema is never taken over) and marks it with a COMMENT; emptying it drops
  and creates it again, and only a schema carrying that comment is ever
  dropped. Nothing outside the schema is touched.

The client libraries are imported lazily: a driver process of the PostgreSQL
suite may run under an interpreter that has no redis-py, and the other way round.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

#: set after every FLUSHDB, and as the COMMENT of every schema the harness creates
MARKER = "conveyor-bench:owner"
POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in POSTGRES_SCHEMES


def split_postgres(url: str) -> tuple[str, str]:
    """`postgresql://host:port/db?schema=NAME` -> (the URL without its query, NAME)."""
    parts = urlsplit(url)
    names = parse_qs(parts.query).get("schema", [])
    if len(names) != 1 or not _SCHEMA_NAME.fullmatch(names[0]):
        raise ValueError(f"expected one ?schema=<lower-case identifier> in {url!r}")
    return urlunsplit(parts._replace(query="")), names[0]


def with_schema(base: str, schema: str) -> str:
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"not a schema name this harness makes: {schema!r}")
    return f"{base}?schema={schema}"


def flush(url: str) -> None:
    """Empty the peer's store: FLUSHDB, or drop and recreate its schema."""
    if is_postgres(url):
        recreate_schema(url)
        return
    from redis import Redis

    with Redis.from_url(url, socket_connect_timeout=3) as redis:
        redis.flushdb()
        redis.set(MARKER, "benchmarks/run.py")


# ------------------------------------------------------------------------- PostgreSQL


def _connect(conninfo: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)


def create_schema(url: str) -> None:
    """Create the peer's schema; fails if a schema of that name exists already."""
    from psycopg import sql

    conninfo, schema = split_postgres(url)
    with _connect(conninfo) as conn, conn.transaction():
        name = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(name, sql.Literal(MARKER)))


def recreate_schema(url: str) -> None:
    _replace_schema(url, recreate=True)


def drop_schema(url: str) -> None:
    """Drop the peer's schema if it exists (and carries the harness's marker)."""
    _replace_schema(url, recreate=False)


def _replace_schema(url: str, recreate: bool) -> None:
    from psycopg import errors, sql

    conninfo, schema = split_postgres(url)
    name = sql.Identifier(schema)
    with _connect(conninfo) as conn:
        for attempt in (1, 2):
            try:
                with conn.transaction():
                    owner = conn.execute(
                        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace "
                        "WHERE nspname = %s",
                        (schema,),
                    ).fetchone()
                    if owner is None and not recreate:
                        return
                    if owner is not None:
                        if owner[0] != MARKER:
                            raise RuntimeError(
                                f"refusing to drop schema {schema!r}: it was not created by "
                                f"benchmarks/run.py (no {MARKER!r} comment)"
                            )
                        # A worker killed mid-transaction can hold locks for a moment.
                        conn.execute("SET LOCAL lock_timeout = '10s'")
                        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(name))
                    if recreate:
                        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
                        conn.execute(
                            sql.SQL("COMMENT ON SCHEMA {} IS {}").format(name, sql.Literal(MARKER))
                        )
                return
            except errors.LockNotAvailable:
                if attempt == 2:
                    raise
                _end_sessions_locking(conn, schema)


def _end_sessions_locking(conn: Any, schema: str) -> None:
    """End the sessions that hold locks on objects of `schema`: only a peer's own
    worker or producer can, since nothing else knows the random schema name."""
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT l.pid FROM pg_locks l "
        "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND l.pid <> pg_backend_pid()) AS holders",
        (schema,),
    )


def postgres_facts(base: str) -> dict[str, str]:
    """The server's version and the settings that move a queue's figures most."""
    with _connect(base) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('autovacuum'), "
            "current_setting('synchronous_commit'), current_setting('fsync'), "
            "current_setting('shared_buffers')"
        ).fetchone()
    assert row is not None
    keys = ("version", "autovacuum", "synchronous_commit", "fsync", "shared_buffers")
    return dict(zip(keys, (str(v) for v in row), strict=True))
