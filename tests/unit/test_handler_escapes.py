"""A handler that raises what is not an ordinary exception (CancelledError
from its own code, GeneratorExit, SystemExit, KeyboardInterrupt) or lets
StopIteration escape a sync handler (which a future cannot carry) fails its
attempt like any error: it must not leave its job "running" with no outcome
(recovered later as a stall, its error lost), hang its slot, or end the
worker's event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import Conveyor, JobState

ESCAPES: list[type[BaseException]] = [
    asyncio.CancelledError,
    GeneratorExit,
    SystemExit,
    KeyboardInterrupt,
    StopIteration,
]


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("escape", ESCAPES, ids=lambda e: e.__name__)
async def test_a_handler_raising_a_base_exception_fails_its_attempt(
    kind: str, escape: type[BaseException]
) -> None:
    app = Conveyor("memory://")

    if kind == "async":

        @app.job("odd", retries=0, timeout=None)
        async def odd_async(payload: Any) -> None:
            raise escape("from the handler")

    else:

        @app.job("odd", retries=0, timeout=None)
        def odd_sync(payload: Any) -> None:
            raise escape("from the handler")

    @app.job("fine")
    async def fine(payload: Any) -> str:
        return "ok"

    async with app:
        odd = await app.enqueue("odd", {})
        after = await app.enqueue("fine", {})
        ran = await asyncio.wait_for(app.drain(), 20)
        by_id = {job.id: job for job in ran}
        assert by_id[odd.id].state is JobState.FAILED, by_id[odd.id]
        assert escape.__name__ in (by_id[odd.id].error or "")
        assert by_id[after.id].state is JobState.COMPLETED  # the worker went on
        stored = await app.get_job(odd.id)
        assert stored is not None and stored.state is JobState.FAILED
