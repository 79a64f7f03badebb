"""SQLAlchemy 2 (blocking sessions: Flask, scripts) and conveyor in one
PostgreSQL database: an order and the job that ships it are stored by the
same transaction, through the `_sync` twins. A rollback leaves neither; a
commit stores both and wakes a worker at once.

    DATABASE_URL=postgresql+psycopg://app@db/shop CONVEYOR_URL=postgresql://app@db/shop \\
        python -c "import sqlalchemy_sync as r; r.create_tables()"
    conveyor worker sqlalchemy_sync:conveyor      # beside the app

It needs the psycopg 3 driver (`postgresql+psycopg://`): conveyor stores
the job with the session's own connection.
"""

from __future__ import annotations

import os

from pydantic import BaseModel
from sqlalchemy import String, create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from conveyor import Conveyor, Job, JobContext

engine = create_engine(os.environ["DATABASE_URL"])
Sessions = sessionmaker(engine, expire_on_commit=False)
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
def ship(payload: Ship, ctx: JobContext) -> None:
    # A plain `def` handler runs in a worker thread: blocking sessions are fine.
    with Sessions.begin() as session:
        session.execute(update(Order).where(Order.id == payload.order_id).values(shipped=True))
    ctx.log("shipped", order=payload.order_id)


def place_order(session: Session, item: str) -> tuple[Order, Job]:
    """Inside the caller's transaction (a request's unit of work):

    with Sessions.begin() as session:
        order, job = place_order(session, "a book")
    """
    order = Order(item=item)
    session.add(order)
    session.flush()  # the INSERT runs now: order.id is known
    # connection=session: the job is stored by the session's transaction, on
    # its connection (found in this thread, as `session.connection()` gives it).
    job = ship.enqueue_sync(Ship(order_id=order.id), key=f"ship:{order.id}", connection=session)
    return order, job


def create_tables() -> None:
    # conveyor creates its own schema on first use (or run `conveyor migrate`).
    Base.metadata.create_all(engine)
