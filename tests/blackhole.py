"""A TCP proxy for loopback tests of connections cut off without a word (a
network cut, a NAT or load balancer forgetting a flow: no FIN, no RST)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class BlackHoleProxy:
    """Forwards loopback connections to a server; a cut connection has every
    byte dropped, both ways, its sockets left open."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.pairs: list[dict[str, bool]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await self._server.wait_closed()

    def cut_listens(self) -> int:
        """Cut the connections that sent a LISTEN so far; how many."""
        return self._cut([pair for pair in self.pairs if pair["listen"]])

    def cut_all(self) -> int:
        """Cut every connection made so far (later ones go through)."""
        return self._cut(self.pairs)

    @staticmethod
    def _cut(pairs: list[dict[str, bool]]) -> int:
        fresh = [pair for pair in pairs if not pair["cut"]]
        for pair in fresh:
            pair["cut"] = True
        return len(fresh)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        pair = {"listen": False, "cut": False}
        self.pairs.append(pair)
        for task in (
            self._pipe(reader, up_writer, pair, upstream=True),
            self._pipe(up_reader, writer, pair, upstream=False),
        ):
            running = asyncio.create_task(task)
            self._tasks.add(running)
            running.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: dict[str, bool],
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                pair["listen"] |= upstream and b"LISTEN" in data
                if not pair["cut"]:
                    writer.write(data)
                    await writer.drain()
            if not pair["cut"]:
                writer.close()


@contextlib.asynccontextmanager
async def proxied(url: str) -> AsyncIterator[tuple[str, BlackHoleProxy]]:
    parts = urlsplit(url)
    async with BlackHoleProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        yield parts._replace(netloc=netloc).geturl(), proxy
