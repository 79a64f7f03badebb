"""An idle SQS worker waits out its poll interval (SQS long-polls in whole
seconds, shared across the queues it serves) instead of spinning, and a
wake-up ends the wait early."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from conveyor.backends import from_url
from conveyor.backends.sqs.backend import SQSBackend

pytestmark = pytest.mark.sqs


@pytest.mark.parametrize("queues", [["default"], ["default", "b", "c"]])
@pytest.mark.parametrize("timeout", [0.3, 1.0, 2.5])
async def test_an_empty_blocking_claim_waits_about_its_timeout(
    sqs_bare_urls: Callable[[], str], queues: list[str], timeout: float
) -> None:
    backend = from_url(sqs_bare_urls())
    assert isinstance(backend, SQSBackend)
    await backend.open()
    try:
        started = time.monotonic()
        assert await backend.claim_blocking(queues, 1, 30.0, timeout, "w") == []
        elapsed = time.monotonic() - started
        assert timeout * 0.9 <= elapsed < timeout + 1.5, elapsed
    finally:
        await backend.close()


async def test_a_wake_ends_a_short_wait_early(sqs_bare_urls: Callable[[], str]) -> None:
    backend = from_url(sqs_bare_urls())
    assert isinstance(backend, SQSBackend)
    await backend.open()
    try:
        started = time.monotonic()
        claim = asyncio.ensure_future(backend.claim_blocking(["default"], 1, 30.0, 0.9, "w"))
        await asyncio.sleep(0.2)
        await backend.wake_waiter("w")
        assert await claim == []
        assert time.monotonic() - started < 0.7
    finally:
        await backend.close()
