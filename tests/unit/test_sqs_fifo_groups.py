"""A bare SQS FIFO queue (moto's server): a retry is the same message hidden
for its backoff, and the group's later messages, held by the backend while
the first ran, go back behind it, so they do not run before the retry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_sqlite_backend import new_job

from conveyor import BackendUnavailableError, Conveyor, JobContext
from conveyor.backends import from_url
from conveyor.backends.base import Outcome, OutcomeKind, Retention

pytestmark = [pytest.mark.sqs, pytest.mark.sqs_fifo]


async def test_a_job_retried_after_a_backoff_runs_before_the_rest_of_its_group(
    sqs_fifo_bare_urls: Callable[[], str],
) -> None:
    app = Conveyor(sqs_fifo_bare_urls())
    ran: list[tuple[int, int]] = []
    done = asyncio.Event()

    @app.job("step", retries=1, backoff=1.0)
    async def step(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append((payload["n"], ctx.attempt))
        if payload["n"] == 0 and ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        if len(ran) == 4:
            done.set()

    async with app:
        for n in range(3):
            await app.enqueue("step", {"n": n}, group="a")
        async with app.worker(concurrency=4, lease=5.0, poll_interval=0.05):
            await asyncio.wait_for(done.wait(), 15.0)
    assert [n for n, _ in ran] == [0, 0, 1, 2]
    assert ran[:2] == [(0, 1), (0, 2)]


async def test_a_groups_held_messages_go_back_even_when_the_first_finish_try_fails(
    sqs_fifo_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The head is handed back; the call making it and the group's held
    # message visible fails once, and the worker sends the finish again: the
    # held message must go back too (not stay hidden for its whole lease,
    # holding up the group).
    backend: Any = from_url(sqs_fifo_bare_urls())
    await backend.open()
    try:
        await backend.enqueue([new_job(group="a"), new_job(group="a")])
        [head] = await backend.claim(["default"], 2, 30.0)
        assert backend._gate.held(), "the group's second message is held behind the head"
        real = backend.broker.change_visibility
        calls = 0

        async def fails_once(name: str, changes: Any) -> list[bool]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise BackendUnavailableError("connection reset (injected)")
            done: list[bool] = await real(name, changes)
            return done

        monkeypatch.setattr(backend.broker, "change_visibility", fails_once)
        back = Outcome(head.id, head.token or "", OutcomeKind.QUEUED, time.time())
        with pytest.raises(BackendUnavailableError):
            await backend.finish([back], Retention())
        assert await backend.finish([back], Retention()) == [True]
        monkeypatch.undo()
        got: list[Any] = []
        deadline = time.monotonic() + 8
        while len(got) < 2 and time.monotonic() < deadline:
            for job in await backend.claim(["default"], 2, 30.0):
                got.append(job)
                done = Outcome(job.id, job.token or "", OutcomeKind.COMPLETED, time.time())
                assert await backend.finish([done], Retention()) == [True]
        assert len(got) == 2, "the group stayed held up by a message left hidden"
    finally:
        await backend.close()
