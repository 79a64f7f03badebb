"""A worker's LISTEN connection cut off without a word (a network cut, a NAT
or load balancer forgetting an idle flow: no FIN, no RST) is found out and
made again: otherwise the worker would hear no job again and wake only at
its poll interval, saying nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from conveyor import Conveyor
from conveyor.backends.postgres import listener

pytestmark = pytest.mark.postgres


class BlackHoleProxy:
    """Forwards loopback connections to the PostgreSQL server; `cut_listens()`
    silently drops every byte, both ways, of the connections that sent a
    LISTEN so far, leaving their sockets open."""

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
        cut = [pair for pair in self.pairs if pair["listen"] and not pair["cut"]]
        for pair in cut:
            pair["cut"] = True
        return len(cut)

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


async def test_a_listen_connection_cut_silently_is_found_out_and_made_again(
    postgres_urls: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(listener, "LIVENESS_EVERY", 1.0)
    url = postgres_urls()
    done: dict[int, float] = {}
    async with proxied(url) as (through_proxy, proxy):
        app = Conveyor(through_proxy)
        producer = Conveyor(url)
        for each in (app, producer):

            @each.job("t")
            async def t(payload: Any) -> None:
                done[payload["n"]] = time.monotonic()

        async with producer, app.worker(poll_interval=60, scheduler=False):
            await asyncio.sleep(1)  # listening
            await producer.enqueue("t", {"n": 1})
            for _ in range(100):
                if 1 in done:
                    break
                await asyncio.sleep(0.05)
            assert 1 in done, "the worker did not hear the first job"
            assert proxy.cut_listens() == 1
            cut_at = time.monotonic()
            # Found out within a liveness check and a probe's wait or two,
            # connected again, and the next job is heard (not polled for
            # in a minute).
            await asyncio.sleep(1 + 2 * listener.PROBE_WAIT + 2)
            sent = time.monotonic()
            await producer.enqueue("t", {"n": 2})
            for _ in range(200):
                if 2 in done:
                    break
                await asyncio.sleep(0.05)
        assert 2 in done and done[2] - sent < 5, "the job waited for the poll interval"
    assert time.monotonic() - cut_at < 60
    assert any("LISTEN" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
