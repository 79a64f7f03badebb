"""Statements of the PostgreSQL backend that lock a job's row and then change
it must act on the row as it is once locked, not as it was when the
statement began: a heartbeat (every 50 ms per running job) commits a new
version of a running job's row all the time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest
from test_sqlite_backend import new_job

from conveyor.backends.base import CancelResult, Heartbeat, LeaseStatus
from conveyor.backends.postgres import PostgresBackend

pytestmark = pytest.mark.postgres


async def test_a_cancel_racing_a_heartbeat_is_not_lost(
    postgres_urls: Callable[[], str],
) -> None:
    """Found in CI under load: cancel() answered REQUESTED for a running job,
    yet the worker's heartbeats never saw the cancel and the job ran on.
    Here the race is made certain: another transaction updates the row (as a
    heartbeat does) and commits while the cancel waits for the row's lock."""
    url = postgres_urls()
    backend = PostgresBackend(url)
    await backend.open()
    try:
        await backend.enqueue([new_job()])
        [job] = await backend.claim(["default"], 1, 30.0, time.time())
        table = f'"{backend.schema}".jobs'
        server_url = url.split("?")[0]
        async with await psycopg.AsyncConnection.connect(server_url) as other:
            await other.execute(
                f"UPDATE {table} SET lease_until = lease_until + 1 WHERE id = %s", (job.id,)
            )
            cancel = asyncio.ensure_future(backend.cancel(job.id))
            await asyncio.sleep(0.5)  # the cancel now waits for the row lock
            assert not cancel.done()
            await other.commit()
        assert await asyncio.wait_for(cancel, 10) is CancelResult.REQUESTED
        statuses = await backend.heartbeat([Heartbeat(job.id, job.token)], 30.0)
        assert statuses == [LeaseStatus.CANCEL]
    finally:
        await backend.close()
