"""Bad redis:// URLs are refused at construction, naming the URL and what is wrong."""

from __future__ import annotations

import pytest

from conveyor import Conveyor, InvalidOptionError


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
