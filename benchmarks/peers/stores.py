"""Where a peer's data lives, and how the harness empties it between phases.

* Redis suite: a logical DB of its own, emptied with FLUSHDB; a marker key
  written after every flush tells later runs the DB is the harness's.
* bullmq suite: the same, and conveyor's URL there is `bullmq://` on that DB
  (`bullmq_url`), BullMQ's layout under the queue and prefix that
  benchmarks/node/bench.mjs uses.
* PostgreSQL suite: a schema of its own in a shared database, named
  `bench_<peer>_<random>` by run.py and given in the peer's URL as
  `?schema=NAME`. run.py creates it (plain CREATE SCHEMA, so an existing
  schema is never taken over) and marks it with a COMMENT; emptying it drops
  and creates it again, and only a schema carrying that comment is ever
  dropped. Nothing outside the schema is touched.
* SQS suite: a moto server of its own (`MotoServer`, started by run.py for
  one peer and stopped after it), so everything on it is the peer's; the
  peer's URL is conveyor's SQS form, `sqs://<queue>?region=..&endpoint_url=..`,
  which the other peers translate into their own settings. Emptying it purges
  every queue on that server and deletes the SQLite file named by `store=`.
  Only a loopback endpoint is ever purged.

The client libraries are imported lazily: a driver process of the PostgreSQL
suite may run under an interpreter that has no redis-py, and the other way round.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

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


#: the BullMQ queue and key prefix of the bullmq suite: bench.mjs's queue under
#: BullMQ's default prefix, so conveyor and Node use the same keys
BULL_QUEUE = "bench"
BULL_PREFIX = "bull"


def bullmq_url(redis_url: str) -> str:
    """conveyor's `bullmq://` URL for BullMQ's queue `bench` in the Redis DB
    of `redis_url` (redis://host:port/db), the DB the harness flushes."""
    parts = urlsplit(redis_url)
    query = f"queue={BULL_QUEUE}&prefix={BULL_PREFIX}"
    return urlunsplit(parts._replace(scheme="bullmq", query=query))


def flush(url: str) -> None:
    """Empty the peer's store: FLUSHDB, drop and recreate its schema, or purge
    its moto server's queues (and delete its SQLite store)."""
    if is_postgres(url):
        recreate_schema(url)
        return
    if is_sqs(url):
        purge_sqs(url)
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


# ------------------------------------------------------------------------------- SQS

#: moto's credentials and region: set for the SQS suite's drivers, workers and
#: server, so that a user's own AWS settings never come into play
SQS_REGION = "us-east-1"
SQS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": SQS_REGION,
    "AWS_REGION": SQS_REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    # moto refuses a second PurgeQueue within 60 s, as SQS does; the harness
    # purges between phases a few seconds apart, on a server of its own.
    "MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR": "false",
}
_SQS_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


def sqs_env(base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _SQS_UNSET}
    env.update(SQS_ENV)
    return env


def is_sqs(url: str) -> bool:
    return urlsplit(url).scheme == "sqs"


def sqs_options(url: str) -> dict[str, str]:
    """The options of conveyor's `sqs://queue?...&store=URL` form; `store=`
    comes last and takes the rest of the URL, as in conveyor's parser."""
    query = url.partition("?")[2]
    found = re.search(r"(?:^|&)store=", query)
    options = dict(parse_qsl(query[: found.start()] if found else query))
    if found:
        options["store"] = query[found.end() :]
    return options


def sqs_url(queue: str, endpoint: str, store: str | None = None) -> str:
    url = f"sqs://{queue}?region={SQS_REGION}&endpoint_url={endpoint}&create=true"
    return url + (f"&store={store}" if store else "")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sqs_client(url: str) -> Any:
    """A blocking botocore client for the endpoint in `url` (loopback only)."""
    import botocore.session

    options = sqs_options(url)
    endpoint = options.get("endpoint_url", "")
    if not _loopback(urlsplit(endpoint).hostname or ""):
        raise ValueError(f"refusing to touch an SQS endpoint off this machine: {endpoint!r}")
    return botocore.session.get_session().create_client(
        "sqs", region_name=options.get("region", SQS_REGION), endpoint_url=endpoint
    )


def purge_sqs(url: str) -> None:
    """Purge every queue on the peer's moto server (all of it is the peer's),
    and delete its SQLite store file if the URL names one."""
    client = sqs_client(url)
    try:
        for queue_url in client.list_queues().get("QueueUrls", []):
            client.purge_queue(QueueUrl=queue_url)
    finally:
        client.close()
    store = sqs_options(url).get("store", "")
    if store.startswith("sqlite:///"):
        path = store.removeprefix("sqlite://").partition("?")[0]
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)


class MotoStartError(RuntimeError):
    """moto's server did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(log: Path, python: str = sys.executable) -> Iterator[str]:
    """Run `python -m moto.server` on a free loopback port; yield its endpoint.
    The port is picked, then bound by moto: if another process takes it in
    between, moto exits and another port is tried."""
    for _attempt in range(3):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=sqs_env(dict(os.environ)),
                start_new_session=True,
            )
        try:
            if _wait_ready(proc, port):
                yield endpoint
                return
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    raise MotoStartError("moto server did not start: " + " | ".join(tail))


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    return False


def moto_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("moto")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
