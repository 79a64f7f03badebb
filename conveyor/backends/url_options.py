"""Readers of the options conveyor adds to backend URLs, shared by every
backend's url.py so that `create=yes`, `wait=5` and `store=...` mean the same
and are refused with the same words everywhere."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

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


# Query options whose values are never printed (libpq takes ?password= and
# ?sslpassword=, Redis URLs ?password=).
_SECRET_OPTIONS = re.compile(r"password|secret|token", re.IGNORECASE)


def without_secrets(url: str) -> str:
    """`url` as conveyor prints it (log lines, prompts, dry runs): the
    password of its user, of a broker's store URL and of options named like
    one shown as ***; otherwise as given."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    options, store = split_store(parts.query)
    query = "&".join(
        f"{name}=***" if sep and _SECRET_OPTIONS.search(name) else f"{name}{sep}{value}"
        for name, sep, value in (item.partition("=") for item in options.split("&") if item)
    )
    if store is not None:
        query += ("&" if query else "") + "store=" + without_secrets(store)
    if netloc == parts.netloc and query == parts.query:
        return url  # as given (urlunsplit would rewrite sqlite:////path)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(url: str) -> set[str]:
    """The passwords `without_secrets` masks in `url`, as written and decoded."""
    parts = urlsplit(url)
    found = [parts.password or ""]
    options, store = split_store(parts.query)
    for name, sep, value in (item.partition("=") for item in options.split("&") if item):
        if sep and _SECRET_OPTIONS.search(name):
            found.append(value)
    if store is not None:
        found.extend(_secrets(store))
    return {text for secret in found for text in (secret, unquote(secret)) if text}


def redact(text: str, url: str) -> str:
    """`text` (an error's message about `url`) with `url`'s passwords masked
    where a URL in it holds them (`:pw@`, `password=pw`), so that a URL the
    message quotes, or one derived from it, shows as `without_secrets` shows
    it; a short password's letters elsewhere in the text are left alone."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(f":{secret}@", ":***@")
        text = re.sub(rf"=(['\"]?){re.escape(secret)}\1(?=[&'\"\s),;]|$)", r"=\1***\1", text)
    return text


def host_port(url: str, name: str, value: str) -> str:
    """`name=value` of `url` as host:port (an emulator's, an endpoint's)."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise InvalidOptionError(f"{name}={value!r} for {url!r}: expected host:port")
    return value


def split_url(
    url: str, scheme: str, known: frozenset[str], what: str
) -> tuple[str, dict[str, str], str | None]:
    """(what comes between :// and ?, the options, the store= URL) of a
    broker URL of `scheme`; an unknown option is refused naming the known."""
    given, sep, rest = url.partition("://")
    if not sep or given.lower() != scheme:
        raise InvalidOptionError(f"not a {what} URL: {url!r}")
    where, _, query = rest.partition("?")
    query, store = split_store(query)
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in known:
            raise InvalidOptionError(
                f"unknown option {name!r} in {url!r}; known: {', '.join(sorted(known))}"
            )
        options[name] = value
    return where, options, store
