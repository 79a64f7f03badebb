"""postgresql:// URLs: libpq's parameters pass through, conveyor's own are
taken out, and a typo in either is refused with the URL and the known names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from availability import unavailable
from psycopg.conninfo import conninfo_to_dict

from conveyor import Conveyor
from conveyor.backends.postgres.url import parse_url
from conveyor.job import BackendUnavailableError, InvalidOptionError


def test_conveyor_options_are_taken_out_and_libpq_ones_kept() -> None:
    url = parse_url(
        "postgres://app:secret@db.example:6543/jobs?schema=myapp&sslmode=require"
        "&application_name=worker&pool_size=4&migrate=false&vacuum=off"
    )
    assert (url.schema, url.migrate, url.pool_size, url.vacuum) == ("myapp", False, 4, False)
    assert url.conninfo.startswith("postgresql://app:secret@db.example:6543/jobs?")
    assert "sslmode=require" in url.conninfo and "application_name=worker" in url.conninfo
    assert "schema" not in url.conninfo and "pool_size" not in url.conninfo
    assert url.display == "db.example:6543/jobs"  # no password in messages


# libpq settings the URL gets unless it says otherwise: a server that does
# not answer fails the connect in 5 s, and a connection cut off without a
# word (no FIN, no RST) is dropped by TCP in about 30 s, not hours.
DEFAULTS = (
    "connect_timeout=5&keepalives_idle=15&keepalives_interval=5&keepalives_count=3"
    "&tcp_user_timeout=30000"
)


def test_defaults() -> None:
    url = parse_url("postgresql://127.0.0.1/test")
    assert (url.schema, url.migrate, url.pool_size, url.vacuum) == ("conveyor", True, 10, True)
    assert url.conninfo == f"postgresql://127.0.0.1/test?{DEFAULTS}"
    own = parse_url("postgresql://127.0.0.1/test?keepalives_idle=60&connect_timeout=2").conninfo
    assert conninfo_to_dict(own)["keepalives_idle"] == "60"
    assert conninfo_to_dict(own)["connect_timeout"] == "2"
    assert conninfo_to_dict(own)["tcp_user_timeout"] == "30000"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://h/db?sslmod=require", "sslmod"),  # a libpq typo
        ("postgresql://h/db?schem=x", "conveyor's own options: migrate, pool_size, prepared"),
        ("postgresql://h/db?schema=My-Schema", "schema name"),
        ("postgresql://h/db?pool_size=1", "pool_size"),
        ("postgresql://h/db?migrate=maybe", "expected true or false"),
        ("postgresql://h:notaport/db", "bad port"),
    ],
)
def test_bad_urls_are_refused_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message) as caught:
        Conveyor(url)
    assert url in str(caught.value)


def test_an_unanswering_server_fails_fast_with_the_address() -> None:
    async def go() -> None:
        app = Conveyor("postgresql://postgres@127.0.0.1:1/test")
        await app.open()

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:1/test unreachable"):
        asyncio.run(go())
    assert time.monotonic() - started < 10


@pytest.mark.postgres
def test_a_server_that_refuses_the_connection_says_why(postgres_server_url: str | None) -> None:
    # A typo in the database's name (or a wrong password) is not an outage
    # to guess at: the error carries the server's own words.
    if postgres_server_url is None:
        unavailable("postgres backend unavailable: no PostgreSQL server answers")
    missing = postgres_server_url.rsplit("/", 1)[0] + "/no_such_database_here"

    async def go() -> None:
        app = Conveyor(missing)
        try:
            await app.stats()
        finally:
            await app.close()

    with pytest.raises(BackendUnavailableError) as caught:
        asyncio.run(go())
    assert 'database "no_such_database_here" does not exist' in str(caught.value)


@pytest.mark.postgres
async def test_a_pool_whose_connections_are_all_busy_says_so(
    postgres_urls: Callable[[], str],
) -> None:
    app = Conveyor(postgres_urls() + "&pool_size=2")
    async with app:
        pool = await app.backend._pool()  # type: ignore[attr-defined]
        async with pool.connection(), pool.connection():
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="2 pooled connections") as caught:
                await app.stats()
        assert "unreachable" not in str(caught.value)
        assert time.monotonic() - started < 10


BASE = "postgresql://postgres@127.0.0.1:5432/test"


def test_prepared_statements_are_on_unless_the_url_says_false() -> None:
    assert parse_url(BASE).prepared_statements is True
    off = parse_url(f"{BASE}?prepared_statements=false&schema=s")
    assert off.prepared_statements is False and off.schema == "s"
    assert "prepared_statements" not in off.conninfo  # conveyor's, not libpq's
    with pytest.raises(InvalidOptionError, match="prepared_statements='nope'"):
        parse_url(f"{BASE}?prepared_statements=nope")


@pytest.mark.parametrize(
    ("url", "conninfo"),
    [
        # No host: libpq's default (or $PGHOST); the `//` must stay.
        ("postgresql:///shop?schema=jobs", f"postgresql:///shop?{DEFAULTS}"),
        ("postgres:///shop", f"postgresql:///shop?{DEFAULTS}"),
        (
            "postgres://u:p@db:6432/shop?sslmode=disable",
            f"postgresql://u:p@db:6432/shop?sslmode=disable&{DEFAULTS}",
        ),
        ("postgresql://%2Fvar%2Frun/shop", f"postgresql://%2Fvar%2Frun/shop?{DEFAULTS}"),
    ],
)
def test_the_conninfo_keeps_the_url_as_libpq_reads_it(url: str, conninfo: str) -> None:
    assert parse_url(url).conninfo == conninfo


def test_acknowledgements_wait_for_the_flush_unless_the_url_says_sync_acks_false() -> None:
    assert parse_url(BASE).sync_acks is True
    assert parse_url(f"{BASE}?sync_acks=false").sync_acks is False


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # Spaces, percent-encoded as libpq reads them, stay spaces (not "+").
        ("options=-c%20statement_timeout%3D300", {"options": "-c statement_timeout=300"}),
        ("application_name=billing%20worker", {"application_name": "billing worker"}),
        # A "+" is a plus to libpq (URIs are not forms).
        ("application_name=a+b", {"application_name": "a+b"}),
    ],
)
def test_libpq_values_reach_libpq_as_it_reads_the_url(query: str, expected: dict[str, str]) -> None:
    conninfo = parse_url(f"postgresql://127.0.0.1:5432/test?{query}").conninfo
    assert conninfo_to_dict(conninfo).items() >= expected.items()
