"""Review: a Redis blocking claim abandoned on the client keeps running on the
server.

`claim_blocking` sends BLPOP and the claim script in one write on the
blocking connection. When the worker gives up on that call (a second
SIGTERM/SIGINT, or stop() cancelling a claim loop that does not end by its
deadline), the connection stays open: the BLPOP goes on waiting on the
server, and when a job arrives the pipelined claim leases it under a claim id
nobody will start or unclaim. The job sits `running` for a whole lease and is
charged a stall, though it never ran.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, JobState

pytestmark = pytest.mark.redis


def _blocked_on_server(app: Conveyor, server_url: str) -> bool:
    """Whether the app's blocking connection sits in a BLPOP on the server."""
    import redis

    pairs = list(app.backend._clients.values())  # type: ignore[attr-defined]
    ports = set()
    for _, blocking in pairs:
        protocol = blocking._protocol
        if protocol is not None and protocol.transport is not None:
            ports.add(protocol.transport.get_extra_info("sockname")[1])
    client = redis.Redis.from_url(server_url.split("?")[0])
    try:
        for info in client.client_list():
            port = int(info["addr"].rsplit(":", 1)[1])
            if port in ports and info.get("cmd") == "blpop":
                return True
        return False
    finally:
        client.close()


async def test_an_abandoned_blocking_claim_does_not_lease_jobs_later(
    redis_urls: Callable[[], str],
) -> None:
    """A blocking claim the worker gave up on (second signal) still claims the
    next job on the server, which then sits running under a claim nobody holds
    instead of being run at once by another worker."""
    url = redis_urls()
    app = Conveyor(url)
    await app.open()
    ran: list[Any] = []

    @app.job("t", retries=0)
    async def t(payload: Any) -> None:
        ran.append(payload)

    try:
        first = app.worker(concurrency=1, lease=30.0, poll_interval=10.0, heartbeat_interval=1.0)
        await first.start()
        for _ in range(500):
            if _blocked_on_server(app, url):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the idle worker never blocked on the server")
        # A second signal: stop() returns at once.
        first._on_signal(signal.SIGTERM)
        first._on_signal(signal.SIGTERM)
        await first.stop()

        job = await app.enqueue("t", {"n": 1})
        async with app.worker(concurrency=1, lease=30.0, poll_interval=0.05):
            try:
                done = await app.wait(job.id, timeout=5)
            except Exception:
                done = await app.get_job(job.id)
        assert done is not None
        assert done.state is JobState.COMPLETED, (
            f"the job enqueued after the first worker stopped is {done.state.value} "
            f"(attempts={done.attempts}): leased by that worker's abandoned blocking claim"
        )
    finally:
        await app.close()
