"""The Redis client's connection settings, parsed from a URL (without
conveyor's own `prefix` option, which layout.py takes off):

    redis://[[user]:password@]host[:port][/db]
    rediss://...[?ssl_ca_certs=...&ssl_certfile=...]       TLS (options: tls.py)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]     as redis-py spells it
    redis+sentinel://[[user]:password@]host[:port][,host2[:port2]...]/service[/db]
    rediss+sentinel://...                                   the same over TLS

Sentinel URLs list the sentinels (port 26379 by default), then the name the
sentinels monitor the master under. The credentials are the master's; the
sentinels are asked without AUTH, over TLS when the scheme says so.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor.backends.redis.tls import TLS_OPTIONS, tls_context

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


def known_options(scheme: str) -> frozenset[str]:
    """The query options a URL of `scheme` may carry (a typo must not pass
    unseen); a unix:// URL has no path left for the database: it comes as ?db=N."""
    known = {"prefix"}
    if scheme == "unix":
        known.add("db")
    if scheme.startswith("rediss"):
        known |= TLS_OPTIONS
    return frozenset(known)


def _port(text: str, url: str, default: int) -> int:
    if not text:
        return default
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"the port in {url!r} must be a number from 0 to 65535, got {text!r}")
    return int(text)


def _sentinel_address(text: str, url: str) -> tuple[str, int]:
    """`host`, `host:port` or `[ipv6]:port`."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad sentinel address {text!r} in {url!r}")
        return host, _port(rest[1:], url, SENTINEL_PORT)
    host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"a sentinel address in {url!r} has no host: {text!r}")
    return host, _port(port, url, SENTINEL_PORT)


class RedisURL:
    """Connection settings: where (a host and port, a unix socket, or the
    sentinels and the service name), who (ACL user, password), which
    database, and TLS (`ssl_context`, None for plain connections)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"not a Redis URL: {url!r}")
        options = dict(parse_qsl(parts.query))
        self.tls = parts.scheme.startswith("rediss")
        self.ssl_context: ssl.SSLContext | None = tls_context(options, url) if self.tls else None
        self.client_certificate = bool(options.get("ssl_certfile"))
        self.unix_path: str | None = None
        self.sentinels: list[tuple[str, int]] = []
        self.service: str | None = None
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user, colon, password = userinfo.partition(":") if at else ("", "", "")
        self.username = unquote(user) if user else None
        self.password = unquote(password) if colon else None
        self.host, self.port = "127.0.0.1", 6379
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"{url!r} needs the socket's path: unix:///path/to/redis.sock")
            self.unix_path = unquote(parts.path)
            self.port = 0
            db = options.get("db", "")
        elif parts.scheme.endswith("+sentinel"):
            self.sentinels = [_sentinel_address(h, url) for h in hosts.split(",") if h]
            service, _, db = parts.path.strip("/").partition("/")
            if not self.sentinels or not service:
                raise ValueError(
                    f"{url!r} needs the sentinels and the service name: "
                    f"{parts.scheme}://host:26379[,host2:26379...]/service_name[/db]"
                )
            self.service = unquote(service)
            self.host, self.port = self.sentinels[0]  # until a sentinel names the master
        else:
            self.host = parts.hostname or "127.0.0.1"
            try:
                self.port = parts.port or 6379
            except ValueError:
                raise ValueError(f"the port in {url!r} must be a number from 0 to 65535") from None
            db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"the Redis database in {url!r} must be a number, got {db!r}")
        self.db = int(db) if db else 0

    def display(self) -> str:
        """The URL to show in messages: the password masked."""
        user = ""
        if self.username or self.password:
            user = f"{self.username or ''}{':***' if self.password else ''}@"
        if self.unix_path is not None:
            return f"unix://{user}{self.unix_path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        if self.service is not None:
            sentinels = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"{scheme}+sentinel://{user}{sentinels}/{self.service}/{self.db}"
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"
