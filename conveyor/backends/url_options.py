"""Readers of the options conveyor adds to backend URLs, shared by every
backend's url.py so that `create=yes`, `wait=5` and `store=...` mean the same
and are refused with the same words everywhere."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

from conveyor.job import InvalidOptionError

_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}


def flag(url: str, name: str, value: str) -> bool:
    """`name=value` of `url` as a yes/no option."""
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidOptionError(f"{name}={value!r} in {url!r}: expected true or false")


def whole_number(url: str, name: str, value: str, low: int, high: int) -> int:
    """`name=value` of `url` as a whole number from `low` to `high`."""
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise InvalidOptionError(
            f"{name}={value!r} in {url!r}: expected a whole number from {low} to {high}"
        )
    return number


def split_store(query: str) -> tuple[str, str | None]:
    """(the query without store=, the store URL) of a broker's URL: store=
    comes last and takes the rest, so a store URL's own options need no
    escaping; one given percent-encoded is decoded."""
    match = re.search(r"(?:^|&)store=", query)
    if match is None:
        return query, None
    store = query[match.end() :]
    if "://" not in store:  # given percent-encoded
        store = unquote(store)
    return query[: match.start()], store
