"""A delayed Pub/Sub message is due its delay after Pub/Sub took it (its
publish time, the server's clock): a producer whose clock runs ahead or
behind the worker's neither holds its jobs back nor runs them early."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends.pubsub import wire

pytestmark = pytest.mark.pubsub


@pytest.mark.parametrize("ahead", [1200.0, -1200.0])
async def test_a_producers_clock_does_not_move_a_delay(
    pubsub_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch, ahead: float
) -> None:
    app = Conveyor(pubsub_bare_urls())
    ran = asyncio.Event()

    @app.job("late")
    async def late(payload: Any) -> None:
        ran.set()

    async with app:
        # The clock the message is made with: the producer's (a module of
        # its own, so that the client's call deadlines keep the real one).
        skewed = types.SimpleNamespace(time=lambda: time.time() + ahead)
        monkeypatch.setattr(wire, "time", skewed, raising=False)
        sent = time.monotonic()
        await app.enqueue("late", {}, delay=2)
        monkeypatch.undo()
        async with app.worker(poll_interval=0.2):
            await asyncio.wait_for(ran.wait(), 15)
    assert 1.5 <= time.monotonic() - sent < 8
