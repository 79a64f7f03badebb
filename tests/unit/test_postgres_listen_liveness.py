"""A worker's LISTEN connection cut off without a word (a network cut, a NAT
or load balancer forgetting an idle flow: no FIN, no RST) is found out and
made again: otherwise the worker would hear no job again and wake only at
its poll interval, saying nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
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


async def test_other_workers_probes_are_not_taken_for_wakes(
    postgres_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every worker on a schema proves its LISTEN connection with NOTIFYs on
    # the one channel: another's probe must not count as a queue's wake (a
    # new counter key every time, for ever, and every waiter woken).
    monkeypatch.setattr(listener, "LIVENESS_EVERY", 0.2)
    url = postgres_urls()
    apps = [Conveyor(url) for _ in range(3)]
    for app in apps:
        app.declare("t")
    workers = [app.worker(poll_interval=60, scheduler=False) for app in apps]
    for worker in workers:
        await worker.__aenter__()
    try:
        await asyncio.sleep(2)
        heard: list[str] = []
        for app in apps:
            for each in app.backend._listeners.values():  # type: ignore[attr-defined]
                heard += list(each.by_queue)
    finally:
        for worker in workers:
            await worker.__aexit__(None, None, None)
    assert not [queue for queue in heard if queue.startswith("conveyor-probe")], heard


async def test_a_proven_listener_whose_probe_later_fails_connects_again(
    postgres_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Notifications reached this channel once: a later self-test that fails
    # (a busy server, a connection cut again) is a lost connection, made again;
    # not "LISTEN does not work through a pooler", which stops every worker.
    monkeypatch.setattr(listener, "PROBE_WAIT", 0.3)
    url = postgres_urls()
    app = Conveyor(url)
    done = asyncio.Event()

    @app.job("t")
    async def t(payload: Any) -> None:
        done.set()

    async with app.worker(poll_interval=60, scheduler=False):
        await asyncio.sleep(1)
        backend: Any = app.backend
        send = backend._send_probe

        async def lost_probe(channel: str, payload: str) -> None:
            return None  # the probe never comes back

        backend._send_probe = lost_probe
        (each,) = backend._listeners.values()
        each._send_probe = lost_probe
        async with await psycopg.AsyncConnection.connect(url.split("?")[0], autocommit=True) as c:
            await c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                (f'LISTEN "{backend.channel}"',),
            )
        await asyncio.sleep(2)  # reconnects whose self-tests fail
        assert each.failure is None, each.failure
        each._send_probe = send
        await asyncio.sleep(1.5)  # heard again
        await app.enqueue("t", {})
        await asyncio.wait_for(done.wait(), 5)
