"""A lean asyncio Redis client: RESP2 over one connection, parsed by hiredis.

Why not redis-py's asyncio client: its per-command overhead (connection pool
checkout, locks, health checks) costs about 30 microseconds per call on top of
a 15-microsecond round trip, and the queue's hot path is one call per batch.
Here a command is one `transport.write` of a packed command and one future
resolved by `data_received`; replies come back in order, so concurrent callers
pipeline on the same connection for free.

It does what the backend needs and no more: URL options (password, username,
db, TLS for rediss://, unix:// sockets), reconnecting with backoff after the server went away,
and following a cluster's MOVED redirection (all of conveyor's keys share one
hash tag, so one node serves them all).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis

logger = logging.getLogger("conveyor.redis")

Arg = str | bytes | int | float


def _pack(command: Sequence[Arg]) -> bytes:
    # hiredis's stub types the argument as a one-element tuple; any length works.
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


class RedisReplyError(Exception):
    """Redis answered a command with an error."""


class RedisConnectionLost(ConnectionError):
    """The connection closed or could not be made."""


class _Pending:
    """The replies one `send` waits for: a single future for the whole batch."""

    __slots__ = ("future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        self._pending: collections.deque[_Pending] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while (reply := self._reader.gets()) is not False:
            batch = pending[0]
            batch.replies.append(reply)
            batch.remaining -= 1
            if not batch.remaining:
                pending.popleft()
                if not batch.future.done():  # a cancelled caller's replies are dropped
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = RedisConnectionLost(f"connection to Redis lost: {exc or 'closed by the server'}")
        while self._pending:
            batch = self._pending.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        if self.closed or self.transport is None:
            raise RedisConnectionLost("connection to Redis is closed")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(future, count))
        self.transport.write(packed)
        return future


# Seconds a TLS handshake may take before the server counts as not speaking TLS.
_TLS_HANDSHAKE = 2.0


class RedisURL:
    """Connection settings parsed from redis://, rediss:// or unix:// URLs
    (`unix:///path/to/redis.sock?db=0`, as redis-py spells them)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL: {url!r}")
        self.tls = parts.scheme == "rediss"
        self.unix_path: str | None = None
        self.host = parts.hostname or "127.0.0.1"
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"{url!r} needs the socket's path: unix:///path/to/redis.sock")
            self.unix_path = unquote(parts.path)
            self.port = 0
            db = dict(parse_qsl(parts.query)).get("db", "")
        else:
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
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


class RespClient:
    """One connection (made on first use, remade after a loss) for one event loop."""

    def __init__(
        self, settings: RedisURL, connect_timeout: float = 5.0, reply_timeout: float = 30.0
    ) -> None:
        self.settings = settings
        self.host, self.port = settings.host, settings.port
        self._connect_timeout = connect_timeout
        # A server that hangs (frozen, partitioned) rather than closing would
        # otherwise keep callers waiting forever.
        self.reply_timeout = reply_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.closed:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if self.settings.tls else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self.settings.unix_path is not None:
                    _, protocol = await loop.create_unix_connection(
                        _Protocol, self.settings.unix_path
                    )
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol,
                        self.host,
                        self.port,
                        ssl=context,
                        # A plain (non-TLS) server never answers a TLS hello: say
                        # so soon rather than after the whole connect timeout.
                        ssl_handshake_timeout=min(_TLS_HANDSHAKE, self._connect_timeout)
                        if context is not None
                        else None,
                    )
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            if context is not None and (
                isinstance(exc, (ssl.SSLError, TimeoutError, ConnectionResetError))
                or "handshake" in reason.lower()
            ):
                reason = (
                    f"the TLS handshake failed ({reason}); rediss:// needs a TLS port: "
                    "is this a plain Redis port (then use redis://)?"
                )
            raise RedisConnectionLost(
                f"cannot connect to Redis at {self._where()}: {reason}"
            ) from exc
        hello: list[tuple[Arg, ...]] = []
        if self.settings.password is not None:
            if self.settings.username:
                hello.append(("AUTH", self.settings.username, self.settings.password))
            else:
                hello.append(("AUTH", self.settings.password))
        if self.settings.db:
            hello.append(("SELECT", self.settings.db))
        if hello:
            packed = b"".join(_pack(cmd) for cmd in hello)
            for reply in await protocol.send(packed, len(hello)):
                if isinstance(reply, hiredis.ReplyError):
                    protocol.transport.close()  # type: ignore[union-attr]
                    raise RedisConnectionLost(f"Redis refused the connection setup: {reply}")
        return protocol

    def _where(self) -> str:
        return self.settings.unix_path or f"{self.host}:{self.port}"

    async def call(self, *args: Arg, wait: float = 0.0) -> Any:
        """Run one command; raise RedisReplyError on an error reply."""
        (reply,) = await self.pipeline([args], wait=wait)
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]], wait: float = 0.0) -> list[Any]:
        """Send commands in one write; their replies in order. An error reply
        raises (after following a MOVED redirection once). `wait` is how long
        a blocking command in the batch may legitimately keep Redis silent."""
        if not commands:
            return []  # nothing to send, and no reply would ever resolve a wait
        packed = b"".join(_pack(cmd) for cmd in commands)
        protocol = await self._connection()
        try:
            async with asyncio.timeout(wait + self.reply_timeout):
                replies = await protocol.send(packed, len(commands))
        except asyncio.CancelledError:
            # The caller gave up: its replies would be read as the next
            # caller's, and a blocking command with a claim queued behind it
            # would still claim jobs for nobody. Closing drops both on the server.
            self.close()
            raise
        except TimeoutError:
            self.close()  # later replies would be misattributed: start afresh
            raise RedisConnectionLost(
                f"no reply from Redis at {self._where()} within {wait + self.reply_timeout:g} s"
            ) from None
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                if message.startswith("MOVED "):
                    self._follow(message)
                    return await self.pipeline(commands, wait=wait)
                raise RedisReplyError(message)
        return replies

    def _follow(self, message: str) -> None:
        """`MOVED <slot> <host>:<port>`: the slot lives on another cluster node."""
        host, _, port = message.split()[2].rpartition(":")
        logger.info("Redis cluster: following MOVED to %s:%s", host, port)
        self.host, self.port = host or self.settings.host, int(port)
        self.close()

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            with contextlib.suppress(Exception):
                self._protocol.transport.close()
        self._protocol = None

    async def aclose(self) -> None:
        """Close and let the loop run the transport's closing callbacks, so the
        socket is really closed before the loop itself may close."""
        self.close()
        for _ in range(2):
            await asyncio.sleep(0)
