"""docs/recipes/sqlalchemy_async.py and sqlalchemy_sync.py against the real
PostgreSQL server: the order and its job are stored by one transaction (a
rollback leaves neither, a commit both), and a worker ships the order.

The recipes' tables go to a schema of their own per test (the URL's
`options=-csearch_path=...`), conveyor's to the `postgres_urls` schema."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from conveyor.backends.postgres.url import parse_url

from .helpers import RECIPES, WAIT, Child, load_recipe, python

pytest.importorskip("sqlalchemy")
pytestmark = pytest.mark.postgres


class Failed(Exception):
    """The request failed after placing the order."""


@pytest.fixture
def urls(
    postgres_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """DATABASE_URL (SQLAlchemy, a schema of its own) and CONVEYOR_URL (the
    same database), set in the environment the recipes read."""
    import psycopg

    conveyor_url = postgres_urls()
    conninfo = parse_url(conveyor_url).conninfo
    tables = f"recipe_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{tables}"')
    joiner = "&" if "?" in conninfo else "?"
    database_url = (
        conninfo.replace("postgresql://", "postgresql+psycopg://", 1)
        + f"{joiner}options={quote(f'-csearch_path={tables}')}"
    )
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CONVEYOR_URL", conveyor_url)
    try:
        yield {"DATABASE_URL": database_url, "CONVEYOR_URL": conveyor_url, "tables": tables}
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{tables}" CASCADE')


async def test_async_session_order_and_job_commit_together(urls: dict[str, str]) -> None:
    from sqlalchemy import func, select

    recipe = load_recipe("sqlalchemy_async.py")
    conveyor, Order = recipe.conveyor, recipe.Order
    try:
        await recipe.create_tables()

        with pytest.raises(Failed):
            async with recipe.Sessions.begin() as session:
                order, gone = await recipe.place_order(session, "never sold")
                raise Failed
        assert await conveyor.get_job(gone.id) is None
        assert await conveyor.get_job_by_key(f"ship:{order.id}") is None
        async with recipe.Sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Order)) == 0

        async with recipe.Sessions.begin() as session:
            order, job = await recipe.place_order(session, "a book")
            assert await conveyor.get_job(job.id) is None  # not committed yet
        assert (await conveyor.get_job(job.id)).payload == {"order_id": order.id}

        # The documented worker command ships it.
        worker = Child(python("-m", "conveyor", "worker", "sqlalchemy_async:conveyor"), RECIPES)
        try:
            worker.wait_for(" started: queues=")
            done = await conveyor.wait(job.id, timeout=WAIT)
            assert done.state.value == "completed", done
            assert "shipped" in worker.wait_for("conveyor.job: orders.ship")
        finally:
            code = worker.stop()
        assert code == 0, worker.output
        async with recipe.Sessions() as session:
            assert (await session.get(Order, order.id)).shipped is True
    finally:
        await conveyor.close()
        await recipe.engine.dispose()


def test_sync_session_order_and_job_commit_together(urls: dict[str, str]) -> None:
    from sqlalchemy import func, select

    recipe = load_recipe("sqlalchemy_sync.py")
    conveyor, Order = recipe.conveyor, recipe.Order
    try:
        recipe.create_tables()

        with pytest.raises(Failed), recipe.Sessions.begin() as session:
            order, gone = recipe.place_order(session, "never sold")
            raise Failed
        assert conveyor.get_job_sync(gone.id) is None
        with recipe.Sessions() as session:
            assert session.scalar(select(func.count()).select_from(Order)) == 0

        with recipe.Sessions.begin() as session:
            order, job = recipe.place_order(session, "a book")
            assert conveyor.get_job_sync(job.id) is None  # not committed yet
        assert conveyor.get_job_sync(job.id).payload == {"order_id": order.id}

        # Run what is due here (the handler is a plain `def` using a session).
        [done] = conveyor.drain_sync()
        assert done.id == job.id and done.state.value == "completed", done
        with recipe.Sessions() as session:
            assert session.get(Order, order.id).shipped is True
    finally:
        conveyor.close_sync()
        recipe.engine.dispose()
