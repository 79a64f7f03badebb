"""The PostgreSQL listener's self-test, on the real server: a probe NOTIFY
sent from the pool must come back on the LISTEN connection. Where it never
does (a pooler in transaction mode: tests/acceptance/test_postgres_pgbouncer.py
has the real thing), waiting for work raises BackendMisconfiguredError and a
worker stops with it rather than poll in silence. Here the probe is sent on
another channel, so that it never comes back on a direct connection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import BackendMisconfiguredError, BackendUnavailableError, Conveyor
from conveyor.backends.postgres import listener as listener_module
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.listener import Listener

pytestmark = pytest.mark.postgres


class ProbeGoesAstray(PostgresBackend):
    """A backend whose probe NOTIFY goes to a channel nobody listens on: to
    its listener, as if a pooler had dropped it."""

    async def _send_probe(self, channel: str, payload: str) -> None:
        await super()._send_probe(f"{channel}:astray", payload)


@pytest.fixture
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(listener_module, "PROBE_WAIT", 0.3)
    return 0.3 * listener_module.PROBE_ATTEMPTS


async def test_the_self_test_passes_on_a_direct_connection(
    postgres_urls: Callable[[], str],
) -> None:
    backend = PostgresBackend(postgres_urls())
    try:
        await backend.open()
        listener = backend._listener()
        assert await listener.start(wait=5.0) is True
        assert listener.failure is None and listener.epoch == 1
        # Queue notifications are counted; the probe's own payload is not.
        await backend._notify([("mail", "send")])
        for _ in range(500):
            if listener.by_queue["mail"]:
                break
            await asyncio.sleep(0.01)
        assert listener.by_queue["mail"] == 1
        assert set(listener.by_queue) == {"mail"}
        assert dict(listener.by_pair) == {("mail", "send"): 1}
    finally:
        await backend.close()


async def test_waiting_raises_when_notifications_never_arrive(
    postgres_urls: Callable[[], str], quick_probe: float
) -> None:
    backend = ProbeGoesAstray(postgres_urls())
    try:
        await backend.open()
        started = time.monotonic()
        with pytest.raises(BackendMisconfiguredError) as raised:
            await backend.wait_for_work(["default"], timeout=30.0)
        assert time.monotonic() - started < quick_probe + 5.0  # not the 30 s timeout
        message = str(raised.value)
        assert "LISTEN/NOTIFY does not work through" in message
        assert "pool_mode=transaction" in message and "session mode" in message
        # For good: the next wait says so at once.
        started = time.monotonic()
        with pytest.raises(BackendMisconfiguredError):
            await backend.wait_for_work(["default"], timeout=30.0)
        assert time.monotonic() - started < 1.0
    finally:
        await backend.close()


async def test_a_probe_that_cannot_be_sent_is_an_outage_not_a_misconfiguration(
    postgres_urls: Callable[[], str], quick_probe: float
) -> None:
    """While the pool cannot reach the server the probe cannot be sent: the
    listener retries (as for a lost connection) and proves itself once the
    server answers, never giving up for good."""
    backend = PostgresBackend(postgres_urls())
    failures = 0

    async def flaky_probe(channel: str, payload: str) -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise BackendUnavailableError("down for the test")
        await backend._send_probe(channel, payload)

    try:
        await backend.open()
        listener = Listener(
            backend.settings.conninfo, backend.channel, flaky_probe, backend.settings.display
        )
        try:
            await asyncio.wait_for(_until_started(listener), 15)
            assert failures == 3 and listener.failure is None and listener.epoch == 1
        finally:
            await listener.stop()
    finally:
        await backend.close()


async def test_a_worker_stops_with_the_reason(
    postgres_urls: Callable[[], str], quick_probe: float, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres_urls()
    app = Conveyor(url, backend=ProbeGoesAstray(url))
    ran: list[Any] = []

    @app.job("work")
    async def work(payload: Any) -> None:
        ran.append(payload)

    try:
        job = await app.enqueue("work", {"n": 1})
        worker = app.worker(concurrency=2, poll_interval=30.0, shutdown_timeout=2.0)
        started = time.monotonic()
        with (
            caplog.at_level(logging.INFO, logger="conveyor"),
            pytest.raises(BackendMisconfiguredError, match="LISTEN/NOTIFY"),
        ):
            await asyncio.wait_for(worker.run(), 20)
        # It stopped by itself, once idle: not after its 30 s poll interval.
        assert time.monotonic() - started < quick_probe + 10.0
        assert worker.failure is not None
        assert ran == [{"n": 1}]  # what was there ran; then the worker stopped
        assert (await app.get_job(job.id)).state.value == "completed"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage().split(": ", 1)[0] for r in errors] == [
            f"worker {worker.id} stopping"
        ]
        assert "unavailable" not in caplog.text  # not reported as an outage
    finally:
        await app.close()


async def _until_started(listener: Listener) -> None:
    while not await listener.start(wait=1.0):
        pass
