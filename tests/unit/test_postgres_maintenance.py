"""The PostgreSQL backend keeps its tables small by itself: completed jobs
beyond retention are deleted in batches, and it VACUUMs its tables once
dead rows pile up (this machine's server runs with autovacuum off, as some
production servers effectively do when autovacuum falls behind)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.postgres.maintenance import DEAD_ROWS_FLOOR

pytestmark = pytest.mark.postgres

FAST = {"concurrency": 10, "recover_interval": 0.05, "poll_interval": 0.05}


async def run_jobs(app: Conveyor, count: int) -> None:
    done: list[str] = []
    all_done = asyncio.Event()

    def completed(event: Any) -> None:
        done.append(event.job.id)
        if len(done) == count:
            all_done.set()

    app.on("job.completed", completed)
    await app.enqueue_many([("noop", i) for i in range(count)])
    async with app.worker(**FAST):
        await asyncio.wait_for(all_done.wait(), timeout=60)


async def table_stats(app: Conveyor) -> dict[str, Any]:
    rows = await app.backend._fetch(  # type: ignore[attr-defined]
        "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables"
        " WHERE schemaname = %(s)s AND relname = 'jobs'",
        {"s": app.backend.schema},  # type: ignore[attr-defined]
    )
    dead, vacuums = rows[0]
    return {"dead": dead, "vacuums": vacuums}


def noop_app(url: str, **options: Any) -> Conveyor:
    app = Conveyor(url, **options)

    @app.job("noop")
    async def noop(payload: Any) -> None:
        return None

    return app


async def test_retention_trims_in_batches_and_stays_bounded(
    postgres_urls: Callable[[], str],
) -> None:
    app = noop_app(postgres_urls(), keep_completed=50)
    try:
        await run_jobs(app, 400)
        completed = (await app.stats())["default"]["completed"]
        # Trimmed every 50 // 10 = 5 completions: never more than a tenth over.
        assert 50 <= completed < 50 + 5 + 10, completed
        kept = await app.list_jobs(state=JobState.COMPLETED, limit=100)
        assert {job.payload for job in kept} >= set(range(400 - 40, 400))  # the newest stay
    finally:
        await app.close()


@pytest.fixture
def own_database_url(postgres_urls: Callable[[], str]) -> Iterator[str]:
    """A database of its own: VACUUM cannot remove rows that a transaction
    open elsewhere in the same database may still see, and the tests running
    beside this one (other parts of the suite) share the `test` database."""
    import psycopg

    server = postgres_urls().split("?")[0]
    name = f"conveyor_vacuum_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_backend_vacuums_its_jobs_table_when_dead_rows_pile_up(
    own_database_url: str,
) -> None:
    app = noop_app(own_database_url, keep_completed=10)
    try:
        await app.open()
        before = await table_stats(app)
        await run_jobs(app, DEAD_ROWS_FLOOR)  # about three dead rows per job
        deadline = time.monotonic() + 30
        async with app.worker(**FAST):  # its lease-recovery tick looks at the dead rows
            while (await table_stats(app))["vacuums"] == before["vacuums"]:
                assert time.monotonic() < deadline, await table_stats(app)
                await asyncio.sleep(0.2)
        assert (await table_stats(app))["dead"] < DEAD_ROWS_FLOOR
    finally:
        await app.close()


async def test_vacuum_false_leaves_it_to_the_server(postgres_urls: Callable[[], str]) -> None:
    app = noop_app(postgres_urls() + "&vacuum=false", keep_completed=10)
    try:
        await run_jobs(app, DEAD_ROWS_FLOOR)
        async with app.worker(**FAST):
            await asyncio.sleep(3)  # longer than the maintenance's look interval
        assert (await table_stats(app))["vacuums"] == 0
    finally:
        await app.close()
