"""Capabilities carry limits as well as flags, and the facade acts on them.

A broker such as SQS holds a job for 15 minutes at most, takes 10 messages
per call and has no priorities; the facade must refuse what does not fit
before anything is stored, naming the operation and the backend, and split
batches to the backend's largest. These run on the memory backend with its
declared capabilities narrowed, so each rule is seen in isolation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence

import pytest

from conveyor import Conveyor, NotSupportedError
from conveyor.backends.base import NewJob
from conveyor.backends.memory import MemoryBackend
from conveyor.job import Job


class NarrowBackend(MemoryBackend):
    """The memory backend, declaring a broker's limits and counting round trips."""

    def __init__(self, **limits: object) -> None:
        super().__init__()
        self.capabilities = dataclasses.replace(MemoryBackend.capabilities, **limits)  # type: ignore[arg-type]
        self.batches: list[int] = []

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        self.batches.append(len(jobs))
        return await super().enqueue(jobs)


async def _app(backend: MemoryBackend) -> AsyncIterator[Conveyor]:
    app = Conveyor("memory://", backend=backend)

    @app.job("work")
    async def work(payload: dict[str, int]) -> None:
        return None

    async with app:
        yield app


@pytest.fixture
async def broker() -> AsyncIterator[tuple[Conveyor, NarrowBackend]]:
    backend = NarrowBackend(
        max_delay=900.0, max_batch=10, priorities=False, hint="add ?store=sqlite:///jobs.db"
    )
    async for app in _app(backend):
        yield app, backend


async def test_a_delay_beyond_the_longest_is_refused_and_nothing_is_stored(
    broker: tuple[Conveyor, NarrowBackend],
) -> None:
    app, backend = broker
    with pytest.raises(NotSupportedError, match=r"delays over 900 s.*add \?store="):
        await app.enqueue("work", {"n": 1}, delay=901)
    with pytest.raises(NotSupportedError, match="delays over 900 s"):
        await app.enqueue_many([("work", {"n": 1}), ("work", {"n": 2}, {"delay": 3600})])
    assert backend.batches == []
    assert await app.list_jobs() == []
    assert (await app.enqueue("work", {"n": 1}, delay=900)).state.value == "scheduled"


async def test_priorities_are_refused_where_the_backend_has_none(
    broker: tuple[Conveyor, NarrowBackend],
) -> None:
    app, backend = broker
    with pytest.raises(NotSupportedError, match=r"memory:// backend does not support priorities"):
        await app.enqueue("work", {"n": 1}, priority=5)
    assert backend.batches == []
    await app.enqueue("work", {"n": 1}, priority=0)
    assert backend.batches == [1]


async def test_a_large_batch_goes_out_in_batches_of_the_largest_size(
    broker: tuple[Conveyor, NarrowBackend],
) -> None:
    app, backend = broker
    jobs = await app.enqueue_many([("work", {"n": n}) for n in range(25)])
    assert backend.batches == [10, 10, 5]
    assert [j.payload["n"] for j in jobs] == list(range(25))
    assert len(await app.list_jobs(limit=100)) == 25


async def test_enqueue_inside_a_transaction_needs_a_backend_that_can() -> None:
    async for app in _app(NarrowBackend()):
        with pytest.raises(NotSupportedError, match=r"connection=.*postgresql://"):
            await app.enqueue("work", {"n": 1}, connection=object())
        with pytest.raises(NotSupportedError, match=r"connection="):
            await app.job_type("work").enqueue_many([{"n": 1}], connection=object())
        assert await app.list_jobs() == []


def test_the_blocking_twin_takes_the_connection_too() -> None:
    app = Conveyor("memory://")

    @app.job("work")
    def work(payload: dict[str, int]) -> None:
        return None

    try:
        with pytest.raises(NotSupportedError, match="connection="):
            app.enqueue_sync("work", {"n": 1}, connection=object())
    finally:
        app.close_sync()


@pytest.mark.parametrize("url", ["memory://?x=1", "memory://foo", "memory:///path"])
def test_memory_urls_take_no_options(url: str) -> None:
    from conveyor import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="memory:// takes no host, path or options"):
        Conveyor(url)
    assert Conveyor("memory://").url == "memory://"
