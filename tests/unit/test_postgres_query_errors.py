"""A statement the server cancels (a lock_timeout or statement_timeout the
URL sets, a deadlock) is not the server being unreachable: the error says
what the server said, and a read is not run a second time for it (a second
try waits out the same lock again)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
from blackhole import proxied

from conveyor import BackendUnavailableError, Conveyor

pytestmark = pytest.mark.postgres


@contextmanager
def jobs_table_locked(url: str) -> Iterator[None]:
    """Another session holds the jobs table (ACCESS EXCLUSIVE) meanwhile."""
    parts = urlsplit(url)
    schema = dict(parse_qsl(parts.query))["schema"]
    server = parts._replace(query="").geturl()
    ready, done = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(server) as conn:
            conn.execute(f'LOCK TABLE "{schema}".jobs IN ACCESS EXCLUSIVE MODE')
            ready.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(10)
        yield
    finally:
        done.set()
        holder.join()


async def test_a_statement_the_server_cancels_is_said_as_such_and_not_run_twice(
    postgres_urls: Callable[[], str],
) -> None:
    url = postgres_urls()
    app = Conveyor(url + "&options=-c%20lock_timeout%3D200")

    @app.job("t")
    async def t(payload: object) -> None:
        return None

    async with app:
        job = await app.enqueue("t", {})
        backend = app.backend
        ran: list[str] = []
        real_fetch = backend._fetch  # type: ignore[attr-defined]

        async def counting_fetch(query: str, params: object = None, **options: Any) -> object:
            ran.append(query)
            return await real_fetch(query, params, **options)

        backend._fetch = counting_fetch  # type: ignore[attr-defined]
        with jobs_table_locked(url), pytest.raises(BackendUnavailableError) as caught:
            await app.get_job(job.id)
        message = str(caught.value)
        assert "lock timeout" in message and "unreachable" not in message, message
        assert len(ran) == 1, "the read was run again after the server canceled it"
        assert (await app.get_job(job.id)) is not None  # and the pool is fine after


async def test_a_call_on_a_connection_cut_off_without_a_word_ends_and_the_next_works(
    postgres_urls: Callable[[], str],
) -> None:
    """A statement whose answer never comes (its connection silently cut; a
    frozen server) fails within the backend's answer deadline, rather than
    hanging its caller (a worker's heartbeat or claim) for as long as TCP
    takes to give up; the dropped connection is not reused."""
    url = postgres_urls()
    async with proxied(url) as (through_proxy, proxy):
        app = Conveyor(through_proxy)

        @app.job("t")
        async def t(payload: object) -> None:
            return None

        async with app:
            job = await app.enqueue("t", {})
            app.backend.answer_within = 1.0  # type: ignore[attr-defined]
            cut = proxy.cut_all()
            assert cut >= 1
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="no answer within 1 s"):
                await asyncio.wait_for(app.get_job(job.id), 30)
            assert time.monotonic() - started < 15
            # Each cut connection fails one call at most and is dropped (not
            # handed out again); connections made after the cut go through.
            failures = 1
            while failures <= cut:
                try:
                    got = await asyncio.wait_for(app.get_job(job.id), 30)
                except BackendUnavailableError:
                    failures += 1
                    continue
                break
            assert failures <= cut, "a cut connection was handed out twice"
            for _ in range(3):
                got = await asyncio.wait_for(app.get_job(job.id), 30)
                assert got is not None and got.id == job.id


async def test_a_big_enqueue_is_not_cut_by_the_answer_limit(
    postgres_urls: Callable[[], str],
) -> None:
    # One statement holds the whole batch, however long it takes: the limit
    # is for a worker's quick calls, not a bulk insert.
    app = Conveyor(postgres_urls())
    app.declare("t")
    async with app:
        app.backend.answer_within = 0.001  # type: ignore[attr-defined]
        jobs = await app.enqueue_many([("t", {"n": n}) for n in range(3000)])
        assert len(jobs) == 3000
        app.backend.answer_within = 30.0  # type: ignore[attr-defined]
        assert (await app.stats())["default"]["queued"] == 3000
