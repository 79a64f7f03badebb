"""A caller that gives up while conveyor's Redis client is still setting up
a connection (AUTH / SELECT sent, no reply yet) leaves no socket open: a
worker stopping its blocking wait did, and the unclosed transport surfaced
as a ResourceWarning in whatever test came next."""

from __future__ import annotations

import asyncio
import contextlib

from conveyor.backends.redis.resp import RedisURL, RespClient


async def test_cancelling_during_the_connection_set_up_closes_the_socket() -> None:
    accepted = asyncio.Event()
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):  # reads the SELECT, never answers
                pass
        hung_up.set()  # the client closed its end
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(RedisURL(f"redis://127.0.0.1:{port}/3"))
    call = asyncio.create_task(client.call("PING"))
    await asyncio.wait_for(accepted.wait(), 5)
    await asyncio.sleep(0.05)  # the SELECT is out, its reply awaited
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    await asyncio.wait_for(hung_up.wait(), 5)
    await client.aclose()
    server.close()
    await server.wait_closed()
