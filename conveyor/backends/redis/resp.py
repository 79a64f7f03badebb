"""A lean asyncio Redis client: RESP2 over one connection, parsed by hiredis.

Why not redis-py's asyncio client: its per-command overhead (connection pool
checkout, locks, health checks) costs about 30 microseconds per call on top of
a 15-microsecond round trip, and the queue's hot path is one call per batch
(benchmarks/redis_clients.py measures the commands, redis_clients_e2e.py the
backend end to end). Here a command is one `transport.write` of a packed
command and one future resolved by `data_received`; replies come back in
order, so concurrent callers pipeline on the same connection for free.

It does what the backend needs and no more: the URL's settings (url.py: ACL
user and password, db, TLS options, unix sockets, Sentinel), reconnecting
after the server went away (asking the sentinels anew), and a cluster's
redirections (cluster.py). The wire protocol is in wire.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

import hiredis

from conveyor.backends.redis.cluster import Redirects
from conveyor.backends.redis.sentinel import find_master, role_problem
from conveyor.backends.redis.tls import closed_after_handshake
from conveyor.backends.redis.url import RedisURL
from conveyor.backends.redis.wire import (
    Arg,
    Protocol,
    RedisConnectionLost,
    RedisReplyError,
    open_connection,
    pack,
)

__all__ = ["Arg", "RedisConnectionLost", "RedisReplyError", "RedisURL", "RespClient"]

logger = logging.getLogger("conveyor.redis")

# Error replies of a server that cannot serve anyone at the moment.
_UNABLE: Final = frozenset({"LOADING", "MASTERDOWN", "BUSY"})


class RespClient(Redirects):
    """One connection (made on first use, remade after a loss) for one event
    loop, plus one per node a cluster migration sends commands to (ASK)."""

    def __init__(
        self,
        settings: RedisURL,
        connect_timeout: float = 5.0,
        reply_timeout: float = 30.0,
        migration_wait: float = 10.0,
    ) -> None:
        self.settings = settings
        # The node talked to: the URL's, then the one MOVED or the sentinels name.
        self.host, self.port = settings.host, settings.port
        self._connect_timeout = connect_timeout
        # A server that hangs (frozen, partitioned) rather than closing would
        # otherwise keep callers waiting forever.
        self.reply_timeout = reply_timeout
        self.migration_wait = migration_wait
        self._protocol: Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._ask_nodes: dict[tuple[str, int], Protocol] = {}

    async def _connection(self) -> Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.closed:
                if self.settings.sentinels:
                    master = await find_master(self.settings, self._connect_timeout)
                    self.host, self.port = master
                    self._protocol = await self._open((self.host, self.port), check_role=True)
                else:
                    where = self.settings.unix_path or (self.host, self.port)
                    self._protocol = await self._open(where)
            return self._protocol

    async def _node(self, address: tuple[str, int]) -> Protocol:
        protocol = self._ask_nodes.get(address)
        if protocol is None or protocol.closed:
            protocol = self._ask_nodes[address] = await self._open(address)
        return protocol

    async def _open(self, where: str | tuple[str, int], check_role: bool = False) -> Protocol:
        """A connection to `where`, authenticated, on the URL's database
        (and, for Sentinel, checked to be a master)."""
        protocol = await open_connection(where, self.settings.ssl_context, self._connect_timeout)
        hello: list[tuple[Arg, ...]] = []
        if self.settings.password is not None:
            if self.settings.username:
                hello.append(("AUTH", self.settings.username, self.settings.password))
            else:
                hello.append(("AUTH", self.settings.password))
        if self.settings.db:
            hello.append(("SELECT", self.settings.db))
        if check_role:
            hello.append(("ROLE",))
        if not hello:
            if self.settings.ssl_context is None:
                return protocol
            # A TLS 1.3 server that wants a client certificate refuses only
            # after the handshake: find out here, where it can be explained.
            hello.append(("PING",))
        shown = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                replies = await protocol.send(b"".join(pack(cmd) for cmd in hello), len(hello))
        except TimeoutError:
            protocol.shut()
            raise RedisConnectionLost(
                f"no reply from Redis at {shown} to {hello[0][0]!s}"
            ) from None
        except asyncio.CancelledError:
            # The caller gave up while the connection was being set up (a
            # worker stopping its blocking wait): it is no one's to close.
            protocol.shut()
            raise
        except RedisConnectionLost as exc:
            protocol.shut()
            if self.settings.ssl_context is None:
                raise
            raise RedisConnectionLost(
                closed_after_handshake(str(exc), self.settings.client_certificate)
            ) from exc
        problem = next((str(r) for r in replies if isinstance(r, hiredis.ReplyError)), None)
        if problem is not None:
            problem = f"Redis refused the connection setup: {problem}"
        elif check_role:
            problem = role_problem(replies[-1], (self.host, self.port), self.settings.service or "")
        if problem is not None:
            protocol.shut()
            raise RedisConnectionLost(problem)
        return protocol

    async def call(self, *args: Arg, wait: float = 0.0) -> Any:
        """Run one command; raise RedisReplyError on an error reply."""
        (reply,) = await self.pipeline([args], wait=wait)
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]], wait: float = 0.0) -> list[Any]:
        """Send commands in one write; their replies in order. An error reply
        raises (once redirections are followed: cluster.py). `wait` is how
        long a blocking command in the batch may legitimately keep Redis silent."""
        if not commands:
            return []  # nothing to send, and no reply would ever resolve a wait
        protocol = await self._connection()
        replies = await self._send(protocol, commands, wait)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                if self._unable(reply):
                    # Answering, but not able to serve: an outage. The
                    # connection goes, so the next call connects afresh (a
                    # DNS name may point at the new primary by then).
                    protocol.shut()
                    raise RedisConnectionLost(
                        f"Redis at {self.host}:{self.port} cannot serve now: {reply}"
                    )
                return await self._redirected(commands, replies, wait)
        return replies

    def _unable(self, reply: hiredis.ReplyError) -> bool:
        """An error reply saying the server cannot serve anyone now: loading
        its data, a replica (READONLY, where Sentinel is not there to ask
        again: cluster.py), cut off from its primary, or busy in a script."""
        text = str(reply)
        kind = text.split(" ", 1)[0]
        if text.startswith("ERR max number of clients"):
            return True  # said before the server closes a connection it will not take
        return kind in _UNABLE or (kind == "READONLY" and not self.settings.sentinels)

    async def _send(
        self, protocol: Protocol, commands: Sequence[Sequence[Arg]], wait: float
    ) -> list[Any]:
        packed = pack(commands[0]) if len(commands) == 1 else b"".join(map(pack, commands))
        try:
            # No reply in time fails the connection (wire.Protocol's deadlines).
            return await protocol.send(packed, len(commands), wait + self.reply_timeout)
        except asyncio.CancelledError:
            # The caller gave up: its replies would be read as the next
            # caller's, and a blocking command with a claim queued behind it
            # would still claim jobs for nobody. Closing drops both on the server.
            protocol.shut()
            raise

    def _move_to(self, address: tuple[str, int] | None) -> None:
        if address is not None:
            self.host, self.port = address
        self.close()

    def close(self) -> None:
        for protocol in [self._protocol, *self._ask_nodes.values()]:
            if protocol is not None:
                protocol.shut()
        self._protocol = None
        self._ask_nodes = {}

    async def aclose(self) -> None:
        """Close and let the loop run the transport's closing callbacks, so the
        socket is really closed before the loop itself may close."""
        self.close()
        for _ in range(2):
            await asyncio.sleep(0)
