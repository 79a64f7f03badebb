"""The wire: RESP2 commands packed by hiredis, one asyncio protocol per
connection whose replies resolve the futures of the batches sent on it, in
order, and opening a connection (TCP, TLS or a unix socket) with errors that
say what went wrong."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import socket
import ssl
from collections.abc import Sequence
from typing import Any, cast

import hiredis

from conveyor.backends.redis.tls import explain_tls_failure

Arg = str | bytes | int | float


def pack(command: Sequence[Arg]) -> bytes:
    # hiredis's stub types the argument as a one-element tuple; any length works.
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


class RedisReplyError(Exception):
    """Redis answered a command with an error."""


class RedisConnectionLost(ConnectionError):
    """The connection closed or could not be made."""


class _Pending:
    """The replies one `send` waits for: a single future for the whole batch,
    due by `deadline` (loop time), `allowed` seconds after it was sent."""

    __slots__ = ("allowed", "deadline", "future", "remaining", "replies")

    def __init__(
        self, future: asyncio.Future[list[Any]], count: int, deadline: float, allowed: float
    ) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []
        self.deadline = deadline
        self.allowed = allowed


class Protocol(asyncio.Protocol):
    """One connection. Batches sent with an allowance (`send`) that get no
    reply in time fail the connection: a server that hangs (frozen,
    partitioned) rather than closing would otherwise keep its callers
    waiting forever. One timer watches every batch in flight, re-armed only
    when it fires or when a batch is due before it: a timer per batch (an
    asyncio.timeout around each await) cost a tenth of a busy worker's time
    per exchange."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        self._pending: collections.deque[_Pending] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.where = "?"  # the server, as errors name it (set by open_connection)
        self._watch: asyncio.TimerHandle | None = None
        self._why: str | None = None  # what the server said unasked before it closed

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
            if not pending:
                # Said unasked (an error before any command: "max number of
                # clients reached", then the server closes): the connection
                # is no good, and the reason is the server's words.
                self._why = f"Redis said, unasked: {reply}"
                self.shut()
                return
            batch = pending[0]
            batch.replies.append(reply)
            batch.remaining -= 1
            if not batch.remaining:
                pending.popleft()
                if not batch.future.done():  # a cancelled caller's replies are dropped
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = (
            (explain_tls_failure(exc) if exc else None)
            or exc
            or self._why
            or "closed by the server"
        )
        self._fail_pending(RedisConnectionLost(f"connection to Redis lost: {reason}"))

    def _fail_pending(self, error: RedisConnectionLost) -> None:
        while self._pending:
            batch = self._pending.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)

    def send(
        self, packed: bytes, count: int, allowed: float = math.inf
    ) -> asyncio.Future[list[Any]]:
        """Send a batch of `count` commands; the future of their replies, which
        fails (and the connection with it) unless they come within `allowed`
        seconds (inf: the caller bounds the wait itself)."""
        if self.closed or self.transport is None:
            raise RedisConnectionLost(self._why or "connection to Redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        deadline = loop.time() + allowed
        self._pending.append(_Pending(future, count, deadline, allowed))
        watch = self._watch
        if deadline != math.inf and (watch is None or deadline < watch.when()):
            if watch is not None:
                watch.cancel()
            self._watch = loop.call_at(deadline, self._check_deadlines, loop)
        self.transport.write(packed)
        return future

    def _check_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watch = None
        if self.closed or not self._pending:
            return
        now = loop.time()
        late = next((batch for batch in self._pending if batch.deadline <= now), None)
        if late is not None:
            # Later replies would be misattributed: fail them all, start afresh.
            self._fail_pending(
                RedisConnectionLost(
                    f"no reply from Redis at {self.where} within {late.allowed:g} s"
                )
            )
            self.shut()
            return
        due = min(batch.deadline for batch in self._pending)
        if due != math.inf:
            self._watch = loop.call_at(due, self._check_deadlines, loop)

    def shut(self) -> None:
        """Close now: nothing more is sent, and the replies still awaited fail.
        An abort, not a close: a TLS close waits for the server's close_notify
        (up to 30 s), which would keep the socket open after the loop is gone."""
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()


# Seconds a TLS handshake may take before the server counts as not speaking TLS.
_TLS_HANDSHAKE = 2.0


async def open_connection(
    where: str | tuple[str, int], context: ssl.SSLContext | None, timeout: float
) -> Protocol:
    """Connect to a unix socket's path or a (host, port), over TLS if given a
    context; RedisConnectionLost saying why not."""
    loop = asyncio.get_running_loop()
    shown = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
    try:
        async with asyncio.timeout(timeout):
            if isinstance(where, str):
                _, protocol = await loop.create_unix_connection(Protocol, where)
            else:
                _, protocol = await loop.create_connection(
                    Protocol,
                    *where,
                    ssl=context,
                    # A plain (non-TLS) server never answers a TLS hello: say
                    # so soon rather than after the whole connect timeout.
                    ssl_handshake_timeout=min(_TLS_HANDSHAKE, timeout) if context else None,
                )
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        if context is not None:
            reason = explain_tls_failure(exc) or (
                f"the TLS handshake failed ({reason}); rediss:// needs a TLS port: "
                "is this a plain Redis port (then use redis://)?"
                if isinstance(exc, (ssl.SSLError, TimeoutError, ConnectionResetError))
                or "handshake" in reason.lower()
                else reason
            )
        raise RedisConnectionLost(f"cannot connect to Redis at {shown}: {reason}") from exc
    protocol.where = shown
    return protocol
