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


async def test_a_duplicate_whose_job_is_gone_by_the_next_read_is_answered(
    redis_urls: Callable[[], str],
) -> None:
    """A keyed enqueue that finds the key taken answers the existing job's
    record, read in the same script: read in a second round trip, a job
    finished and dropped by retention in between made it a row of Nones
    (TypeError)."""
    import time as clock

    from test_sqlite_backend import new_job

    from conveyor.backends.base import Outcome, OutcomeKind, Retention

    backend: Any = from_url(redis_urls())
    await backend.open()
    try:
        [first] = await backend.enqueue([new_job(key="once")])
        [claimed] = await backend.claim(["default"], 1, 30.0)
        run = backend._run

        async def then_it_ends_and_goes(name: str, *args: Any) -> Any:
            reply = await run(name, *args)
            if name == "enqueue":  # another worker finishes it; retention drops it
                done = Outcome(claimed.id, claimed.token, OutcomeKind.COMPLETED, clock.time())
                await backend.finish([done], Retention(keep_completed=0))
            return reply

        backend._run = then_it_ends_and_goes
        [again] = await backend.enqueue([new_job(key="once")])
        assert again.duplicate and again.id == first.id
    finally:
        await backend.close()
