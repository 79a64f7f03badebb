"""A worker's blocking wait on Redis (BLPOP, for up to its poll interval)
keeps Redis silent on purpose: it must not count against the reply timeout
(30 s), or every idle wait of 30 s or more (poll_interval >= 30 with a long
lease) would be cut as an outage, logged at ERROR, and reconnected."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.backends import from_url

pytestmark = pytest.mark.redis


async def test_an_idle_wait_longer_than_the_reply_timeout_is_no_outage(
    redis_urls: Callable[[], str],
) -> None:
    backend: Any = from_url(redis_urls())
    await backend.open()
    try:
        for client in backend._pair():
            client.reply_timeout = 0.3  # stands in for the 30 s
        began = time.monotonic()
        await backend.wait_for_work(["default"], 1.0)
        assert await backend.claim_blocking(["default"], 1, 30.0, 1.0, "w-1") == []
        assert time.monotonic() - began >= 1.8  # both waited their whole time
    finally:
        await backend.close()
