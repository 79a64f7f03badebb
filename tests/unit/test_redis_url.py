"""Bad redis:// URLs are refused at construction, naming the URL and what is wrong."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from conveyor import BackendUnavailableError, Conveyor, InvalidOptionError


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://127.0.0.1:notaport/0",
            r"port in '.*:notaport/0' must be a number",
        ),
        ("redis://127.0.0.1:99999/0", r"port in .* must be a number from 0 to 65535"),
        ("redis://127.0.0.1:6379/x", r"database in .* must be a number"),
        (
            "redis://127.0.0.1:6379/0?prefx=typo",
            r"option\(s\) 'prefx' in .*; known: prefix",
        ),
        ("redis://127.0.0.1:6379/0?prefix=a:b", r"bad Redis key prefix"),
    ],
)
def test_a_bad_url_is_refused_with_the_url_named(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        Conveyor(url)


def test_the_prefix_option_is_accepted() -> None:
    assert Conveyor("redis://127.0.0.1:6379/0?prefix=myapp").backend.prefix == "{myapp}"  # type: ignore[attr-defined]


def test_rediss_against_a_plain_port_fails_soon_and_says_why(
    redis_urls: Callable[[], str],
) -> None:
    url = redis_urls().replace("redis://", "rediss://", 1)
    app = Conveyor(url)
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailableError, match=r"TLS handshake.*use redis://"):
            app.stats_sync()
    finally:
        app.close_sync()
    assert time.monotonic() - started < 4.5  # the connect timeout is 5 s
