"""A worker's LISTEN connection cut off without a word (a network cut, a NAT
or load balancer forgetting an idle flow: no FIN, no RST) is found out and
made again: otherwise the worker would hear no job again and wake only at
its poll interval, saying nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from blackhole import proxied

from conveyor import Conveyor
from conveyor.backends.postgres import listener

pytestmark = pytest.mark.postgres


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
