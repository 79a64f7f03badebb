"""conveyor's Redis client gives up on a server that stops answering (frozen,
partitioned) rather than keep its callers waiting: a batch unanswered after
the reply timeout (plus the time a blocking command in it may keep Redis
silent) fails with a clear error, every other caller on that connection
too, and the next call connects afresh. Batches that are answered never
count as late however long the connection lives."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from conveyor.backends.redis.resp import RedisConnectionLost, RedisURL, RespClient


class SilentServer:
    """Accepts connections and reads commands; answers +PONG only while
    `answering` is set, else nothing at all."""

    def __init__(self) -> None:
        self.answering = False
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self.answering:
                    # One +PONG per command sent (each starts with "*").
                    writer.write(b"+PONG\r\n" * data.count(b"*"))
        writer.close()

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1)


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    async with SilentServer() as server:
        yield server


def client_of(server: SilentServer, reply_timeout: float) -> RespClient:
    return RespClient(RedisURL(f"redis://127.0.0.1:{server.port}"), reply_timeout=reply_timeout)


async def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    began = time.monotonic()
    try:
        await call()  # type: ignore[misc]
    except BaseException as exc:  # the test inspects it
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


async def test_an_unanswered_call_fails_after_the_reply_timeout_and_says_so(
    silent: SilentServer,
) -> None:
    client = client_of(silent, reply_timeout=0.2)
    elapsed, error = await timed(lambda: client.call("PING"))
    assert isinstance(error, RedisConnectionLost)
    assert f"no reply from Redis at 127.0.0.1:{silent.port} within 0.2 s" in str(error)
    assert 0.15 <= elapsed < 2.0
    await client.aclose()


async def test_every_caller_waiting_on_the_connection_fails_with_it(silent: SilentServer) -> None:
    client = client_of(silent, reply_timeout=0.2)
    calls = [asyncio.create_task(client.call("PING")) for _ in range(3)]
    done, pending = await asyncio.wait(calls, timeout=3)
    assert not pending
    assert all(isinstance(task.exception(), RedisConnectionLost) for task in done)
    await client.aclose()


async def test_a_blocking_command_may_keep_redis_silent_for_its_wait(
    silent: SilentServer,
) -> None:
    client = client_of(silent, reply_timeout=0.2)
    elapsed, error = await timed(lambda: client.call("BLPOP", "k", 1, wait=0.6))
    assert isinstance(error, RedisConnectionLost)
    assert "within 0.8 s" in str(error)
    assert 0.7 <= elapsed < 3.0
    await client.aclose()


async def test_a_short_deadline_sent_after_a_long_one_is_kept(silent: SilentServer) -> None:
    client = client_of(silent, reply_timeout=0.2)
    blocking = asyncio.create_task(client.call("BLPOP", "k", 30, wait=30))
    await asyncio.sleep(0.05)
    elapsed, error = await timed(lambda: client.call("PING"))
    assert isinstance(error, RedisConnectionLost)
    assert elapsed < 1.5  # not the blocking command's 30 s
    with pytest.raises(RedisConnectionLost):
        await asyncio.wait_for(blocking, 3)  # its connection is gone with it
    await client.aclose()


async def test_after_a_timeout_the_next_call_connects_afresh(silent: SilentServer) -> None:
    client = client_of(silent, reply_timeout=0.2)
    with pytest.raises(RedisConnectionLost):
        await client.call("PING")
    silent.answering = True
    assert await asyncio.wait_for(client.call("PING"), 3) == "PONG"
    assert silent.connections == 2
    await client.aclose()


async def test_answered_batches_never_count_as_late(silent: SilentServer) -> None:
    """Calls go on for several reply timeouts on one connection: none fails."""
    silent.answering = True
    client = client_of(silent, reply_timeout=0.1)
    ended = time.monotonic() + 0.5
    calls = 0
    while time.monotonic() < ended:
        replies = await client.pipeline([("PING",), ("PING",)])
        assert replies == ["PONG", "PONG"]
        calls += 1
        await asyncio.sleep(0.01)
    assert calls > 10
    assert silent.connections == 1
    await client.aclose()


async def test_a_cancelled_caller_closes_the_connection(silent: SilentServer) -> None:
    """Its reply would be read as the next caller's: the connection goes."""
    client = client_of(silent, reply_timeout=5)
    call = asyncio.create_task(client.call("PING"))
    await asyncio.sleep(0.1)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    silent.answering = True
    assert await asyncio.wait_for(client.call("PING"), 3) == "PONG"
    assert silent.connections == 2
    await client.aclose()


async def test_a_server_refusing_more_clients_is_said_in_its_words() -> None:
    """A server at maxclients says so unasked, before any command, and
    closes: the next call fails with the server's words (not a bare
    "closed"), and no IndexError is raised in the event loop's callbacks."""

    writers: list[asyncio.StreamWriter] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b"-ERR max number of clients reached\r\n")
        await writer.drain()

    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(RedisURL(f"redis://127.0.0.1:{port}"))
    try:
        await client._connection()
        await asyncio.sleep(0.2)  # the words come before any command
        with pytest.raises(RedisConnectionLost, match="max number of clients"):
            await client.call("PING")
        assert errors == []
    finally:
        loop.set_exception_handler(None)
        await client.aclose()
        for writer in writers:  # closed here, not left to the loop's end
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()
