"""The PostgreSQL URL's own options and what is handed to libpq."""

from __future__ import annotations

import pytest

from conveyor import InvalidOptionError
from conveyor.backends.postgres.url import parse_url

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
        ("postgresql:///shop?schema=jobs", "postgresql:///shop?connect_timeout=5"),
        ("postgres:///shop", "postgresql:///shop?connect_timeout=5"),
        (
            "postgres://u:p@db:6432/shop?sslmode=disable",
            "postgresql://u:p@db:6432/shop?sslmode=disable&connect_timeout=5",
        ),
        ("postgresql://%2Fvar%2Frun/shop", "postgresql://%2Fvar%2Frun/shop?connect_timeout=5"),
    ],
)
def test_the_conninfo_keeps_the_url_as_libpq_reads_it(url: str, conninfo: str) -> None:
    assert parse_url(url).conninfo == conninfo
