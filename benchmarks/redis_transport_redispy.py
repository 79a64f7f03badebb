"""A benchmark-only stand-in for conveyor's RESP client, built on redis-py's
asyncio client (with its hiredis parser), so the Redis backend's own code can
run on either client and be measured end to end (benchmarks/redis_clients_e2e.py).

It offers what the backend uses from `RespClient` (conveyor/backends/redis/resp.py):
the constructor taking a `RedisURL`, `call(*args, wait=)`, `pipeline(commands,
wait=)`, `close()` and `aclose()`, raising the backend's own `RedisReplyError`
and `RedisConnectionLost`. Replies come back as the RESP client gives them:
text decoded as UTF-8 with surrogateescape, and no redis-py response callbacks
(those reshape replies, e.g. TIME into a tuple of ints, SMEMBERS into a set).

`install()` swaps it in for `RespClient` in the backend, in the calling
process only. Cluster redirections (MOVED) are not followed: the benchmark
runs against a single server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.utils import HIREDIS_AVAILABLE

from conveyor.backends.redis import connection as redis_connection
from conveyor.backends.redis.resp import Arg, RedisConnectionLost, RedisReplyError, RedisURL

# redis-py strips the error code from the errors it maps to its own classes;
# the backend recognises NOSCRIPT (an empty script cache) by that code.
_ERROR_CODES: dict[type[Exception], str] = {
    redis_errors.NoScriptError: "NOSCRIPT",
    redis_errors.ReadOnlyError: "READONLY",
    redis_errors.NoPermissionError: "NOPERM",
    redis_errors.ExecAbortError: "EXECABORT",
    redis_errors.BusyLoadingError: "LOADING",
}


def _reply_error(exc: redis_errors.ResponseError) -> RedisReplyError:
    code = next((c for cls, c in _ERROR_CODES.items() if isinstance(exc, cls)), None)
    return RedisReplyError(f"{code} {exc}" if code else str(exc))


class RedisPyClient:
    """The `RespClient` interface on one `redis.asyncio.Redis` (a connection pool)."""

    def __init__(self, settings: RedisURL, connect_timeout: float = 5.0) -> None:
        if not HIREDIS_AVAILABLE:
            raise RuntimeError("redis-py does not see hiredis: pip install 'redis[hiredis]'")
        self.settings = settings
        options: dict[str, Any] = {
            "db": settings.db,
            "username": settings.username,
            "password": settings.password,
            "decode_responses": True,
            "encoding_errors": "surrogateescape",
            "socket_connect_timeout": connect_timeout,
        }
        if settings.unix_path is not None:
            options["unix_socket_path"] = settings.unix_path
        else:
            options.update(host=settings.host, port=settings.port, ssl=settings.tls)
        self._client = aioredis.Redis(**options)
        # Raw replies, as the RESP client returns them (see the module docstring).
        self._client.response_callbacks = {}

    async def call(self, *args: Arg, wait: float = 0.0) -> Any:
        try:
            return await self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        except redis_errors.ResponseError as exc:
            raise _reply_error(exc) from None
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise RedisConnectionLost(f"connection to Redis lost: {exc}") from exc

    async def pipeline(self, commands: Sequence[Sequence[Arg]], wait: float = 0.0) -> list[Any]:
        if not commands:
            return []
        pipe = self._client.pipeline(transaction=False)  # MULTI/EXEC come as commands
        for command in commands:
            pipe.execute_command(*command)
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise RedisConnectionLost(f"connection to Redis lost: {exc}") from exc
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                raise _reply_error(reply)
        return replies

    def close(self) -> None:
        asyncio.get_running_loop().create_task(self.aclose())

    async def aclose(self) -> None:
        await self._client.aclose()


def install() -> None:
    """Make the Redis backend create `RedisPyClient`s in this process."""
    redis_connection.RespClient = RedisPyClient  # type: ignore[attr-defined,assignment]
