"""`connection=` takes what a SQLAlchemy 2 program holds (on the
postgresql+psycopg dialect), not only psycopg's own connections: a Session,
an AsyncSession, a Connection, an AsyncConnection or the pool's connection.
Each form, on the real server: inside the caller's transaction, so gone
after a rollback and stored by a commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from conveyor import Conveyor, InvalidOptionError
from conveyor.backends.postgres.url import parse_url

sqlalchemy = pytest.importorskip("sqlalchemy")
pytestmark = pytest.mark.postgres


class RolledBack(Exception):
    pass


@pytest.fixture
async def app(postgres_urls: Callable[[], str]) -> AsyncIterator[Conveyor]:
    conveyor = Conveyor(postgres_urls())

    @conveyor.job("work")
    async def work(payload: Any) -> None:
        return None

    await conveyor.open()
    yield conveyor
    await conveyor.close()


def sqlalchemy_url(app: Conveyor) -> str:
    return parse_url(app.url).conninfo.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
async def async_engine(app: Conveyor) -> AsyncIterator[Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sqlalchemy_url(app))
    yield engine
    await engine.dispose()


@pytest.fixture
def engine(app: Conveyor) -> Iterator[Any]:
    engine = sqlalchemy.create_engine(sqlalchemy_url(app))
    yield engine
    engine.dispose()


async def _async_forms(session: Any) -> dict[str, Any]:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return {
        "AsyncSession": session,
        "AsyncConnection": connection,
        "pool connection": raw,
        "psycopg.AsyncConnection": raw.driver_connection,
    }


@pytest.mark.parametrize(
    "form", ["AsyncSession", "AsyncConnection", "pool connection", "psycopg.AsyncConnection"]
)
async def test_async_sqlalchemy(app: Conveyor, async_engine: Any, form: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    with pytest.raises(RolledBack):
        async with AsyncSession(async_engine) as session, session.begin():
            target = (await _async_forms(session))[form]
            gone = await app.enqueue("work", {"form": form}, connection=target)
            raise RolledBack
    assert await app.get_job(gone.id) is None

    async with AsyncSession(async_engine) as session, session.begin():
        target = (await _async_forms(session))[form]
        kept = await app.enqueue("work", {"form": form}, connection=target)
        assert await app.get_job(kept.id) is None  # not committed yet
    assert (await app.get_job(kept.id)).payload == {"form": form}


def _sync_forms(session: Any) -> dict[str, Any]:
    connection = session.connection()
    return {
        "Session": session,
        "Connection": connection,
        "pool connection": connection.connection,
        "psycopg.Connection": connection.connection.driver_connection,
    }


@pytest.mark.parametrize("form", ["Session", "Connection", "pool connection", "psycopg.Connection"])
async def test_sync_sqlalchemy_with_the_blocking_twins(
    app: Conveyor, engine: Any, form: str
) -> None:
    from sqlalchemy.orm import Session

    def rolled_back() -> str:
        try:
            with Session(engine) as session, session.begin():
                target = _sync_forms(session)[form]
                job = app.enqueue_sync("work", {"form": form}, connection=target)
                raise RolledBack
        except RolledBack:
            return job.id

    def committed() -> list[str]:
        with Session(engine) as session, session.begin():
            target = _sync_forms(session)[form]
            one = app.enqueue_sync("work", {"form": form}, connection=target)
            items = [("work", {"n": 1}), ("work", {"n": 2})]
            many = app.enqueue_many_sync(items, connection=target)
            assert app.get_job_sync(one.id) is None  # not committed yet
            return [one.id, *(j.id for j in many)]

    assert await app.get_job(await asyncio.to_thread(rolled_back)) is None
    for job_id in await asyncio.to_thread(committed):
        assert await app.get_job(job_id) is not None


async def test_a_sync_session_from_async_code(app: Conveyor, engine: Any) -> None:
    """`await app.enqueue(...)` takes a blocking Session too."""
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        session.begin()
        job = await app.enqueue("work", {"n": 1}, connection=session)
        assert await app.get_job(job.id) is None
        session.commit()
    assert await app.get_job(job.id) is not None


async def test_an_asyncio_session_is_refused_by_the_blocking_twins(
    app: Conveyor, async_engine: Any
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(async_engine) as session, session.begin():
        for target in (await _async_forms(session)).values():
            with pytest.raises(InvalidOptionError, match=r"asyncio connection.*await app\.enqueue"):
                await asyncio.to_thread(app.enqueue_sync, "work", {}, connection=target)
    assert await app.stats() == {}
