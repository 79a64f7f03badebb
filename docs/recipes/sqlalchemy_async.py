"""SQLAlchemy 2 (asyncio) and conveyor in one PostgreSQL database: an order
and the job that ships it are stored by the same transaction. If anything
in it fails, neither exists; once it commits, both do, and a worker is woken
at once (the insert NOTIFYs on commit).

    DATABASE_URL=postgresql+psycopg://app@db/shop CONVEYOR_URL=postgresql://app@db/shop \\
        python -c "import asyncio, sqlalchemy_async as r; asyncio.run(r.create_tables())"
    conveyor worker sqlalchemy_async:conveyor      # beside the app

It needs the psycopg 3 driver (`postgresql+psycopg://`): conveyor stores
the job with the session's own connection. conveyor's tables live in their
own schema (`?schema=`, default `conveyor`) of the same database.
"""

from __future__ import annotations

import os

from pydantic import BaseModel
from sqlalchemy import String, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conveyor import Conveyor, Job, JobContext

engine = create_async_engine(os.environ["DATABASE_URL"])
Sessions = async_sessionmaker(engine, expire_on_commit=False)
conveyor = Conveyor()  # $CONVEYOR_URL: the same database, postgresql://...


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(200))
    shipped: Mapped[bool] = mapped_column(default=False)


class Ship(BaseModel):
    order_id: int


@conveyor.job("orders.ship", retries=5)
async def ship(payload: Ship, ctx: JobContext) -> None:
    # The order is committed: the job exists only if its transaction was.
    async with Sessions.begin() as session:
        await session.execute(
            update(Order).where(Order.id == payload.order_id).values(shipped=True)
        )
    ctx.log("shipped", order=payload.order_id)


async def place_order(session: AsyncSession, item: str) -> tuple[Order, Job]:
    """Inside the caller's transaction (a request's unit of work):

    async with Sessions.begin() as session:
        order, job = await place_order(session, "a book")
    """
    order = Order(item=item)
    session.add(order)
    await session.flush()  # the INSERT runs now: order.id is known
    # connection=session: the job is stored by the session's transaction, on
    # its connection (as `await session.connection()` gives it; a SQLAlchemy
    # AsyncConnection, or psycopg's own connection, works as well).
    job = await ship.enqueue(Ship(order_id=order.id), key=f"ship:{order.id}", connection=session)
    return order, job


async def create_tables() -> None:
    # conveyor creates its own schema on first use (or run `conveyor migrate`).
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
