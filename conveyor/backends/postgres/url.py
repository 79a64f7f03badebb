"""The PostgreSQL backend's URL: libpq's own parameters pass through to
psycopg (checked by libpq, so a typo is refused), conveyor's are taken out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote, urlencode, urlsplit

from conveyor.backends.url_options import flag
from conveyor.job import InvalidOptionError

# conveyor's own options; every other query parameter goes to libpq.
OPTIONS: Final = frozenset(
    {"schema", "migrate", "pool_size", "vacuum", "sync_acks", "prepared_statements"}
)
_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# libpq settings a URL gets unless it gives its own. A server that does not
# answer must not hang a worker's start (libpq's default is to wait for
# ever); and a connection cut off without a word (a network cut, a NAT or
# load balancer dropping the flow: no FIN, no RST) must end in about 30 s
# (TCP keepalives when idle, an unacknowledged-send limit when not), not
# after the system's two hours of keepalive or a quarter hour of resends,
# with every call on it waiting meanwhile. Ignored on Unix sockets.
LIBPQ_DEFAULTS: Final[tuple[tuple[str, str], ...]] = (
    ("connect_timeout", "5"),
    ("keepalives_idle", "15"),
    ("keepalives_interval", "5"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
)


@dataclass(frozen=True, slots=True)
class PostgresURL:
    conninfo: str  # for psycopg: the URL without conveyor's options
    schema: str
    migrate: bool  # create / upgrade the schema on first use
    pool_size: int  # connections per event loop, at most
    vacuum: bool  # the backend's own VACUUM of its tables (see maintenance.py)
    sync_acks: bool  # claims and acknowledgements wait for the WAL flush
    # psycopg's server-side prepared statements (a statement run 5 times on a
    # connection is prepared there): faster claims, but a pooler in
    # transaction mode moves the connection's statements between server
    # connections, where they do not exist.
    prepared_statements: bool
    display: str  # host:port/dbname, for messages (no password)


def parse_url(url: str) -> PostgresURL:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidOptionError(f"not a PostgreSQL URL: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise InvalidOptionError(f"bad port in {url!r}") from None
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in _query_pairs(parts.query):
        if name in OPTIONS:
            ours[name] = value
        else:
            theirs.append((name, value))
    schema = ours.get("schema", "conveyor")
    if not _SCHEMA_NAME.match(schema):
        raise InvalidOptionError(
            f"schema={schema!r} in {url!r}: a schema name is lower-case letters, digits "
            "and underscores, starting with a letter or underscore (at most 63)"
        )
    try:
        pool_size = int(ours.get("pool_size", "10"))
    except ValueError:
        pool_size = 0
    if pool_size < 2:
        raise InvalidOptionError(
            f"pool_size={ours.get('pool_size')!r} in {url!r}: expected a whole number >= 2"
        )
    given = {name for name, _ in theirs}
    theirs += [(name, value) for name, value in _libpq_defaults() if name not in given]
    # Not urlunsplit: it drops the `//` of a URL without a host
    # (`postgresql:///db`: libpq's default host, or $PGHOST).
    conninfo = f"postgresql://{parts.netloc}{parts.path}?{urlencode(theirs, quote_via=quote)}"
    _check_libpq_options(url, conninfo)
    host = parts.hostname or "localhost"
    dbname = parts.path.lstrip("/") or parts.username or "postgres"
    return PostgresURL(
        conninfo=conninfo,
        schema=schema,
        migrate=flag(url, "migrate", ours.get("migrate", "true")),
        pool_size=pool_size,
        vacuum=flag(url, "vacuum", ours.get("vacuum", "true")),
        sync_acks=flag(url, "sync_acks", ours.get("sync_acks", "true")),
        prepared_statements=flag(
            url, "prepared_statements", ours.get("prepared_statements", "true")
        ),
        display=f"{host}:{port or 5432}/{dbname}",
    )


def _libpq_defaults() -> tuple[tuple[str, str], ...]:
    """LIBPQ_DEFAULTS this libpq knows (tcp_user_timeout came in libpq 12; a
    psycopg built against an older system libpq would refuse every URL)."""
    from psycopg import pq

    if pq.version() >= 120000:
        return LIBPQ_DEFAULTS
    return tuple(pair for pair in LIBPQ_DEFAULTS if pair[0] != "tcp_user_timeout")


def _check_libpq_options(url: str, conninfo: str) -> None:
    """libpq parses the URL as it will when connecting: an unknown parameter
    (a typo such as `sslmod=`) is refused now, naming conveyor's own too."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(conninfo)
    except ProgrammingError as exc:
        raise InvalidOptionError(
            f"bad PostgreSQL URL {url!r}: {exc} (conveyor's own options: "
            f"{', '.join(sorted(OPTIONS))}; the rest are libpq's connection parameters)"
        ) from None


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """The URL's query as libpq reads it: percent-decoded, and "+" a plus (a
    URI is not a form; parse_qsl would make it a space, and a space written
    back as "+" reaches libpq as a plus: `options=-c%20x%3D1` broke)."""
    pairs = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs
