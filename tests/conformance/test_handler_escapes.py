"""What a handler raises or returns that no ordinary path expects, on every
backend: a BaseException that is no Exception (SystemExit, KeyboardInterrupt,
GeneratorExit, a CancelledError of its own code) or a StopIteration out of a
sync handler fails its attempt like any error; and text holding a lone
surrogate (a file name decoded from bytes that are not UTF-8) is refused as
data and shown escaped in errors and log lines, where PostgreSQL refused it
and a worker resent such an outcome for ever."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import Conveyor, InvalidPayloadError, JobContext, JobState

from .conftest import needs

pytestmark = needs("lookup")  # drain answers the final records

ESCAPES: list[type[BaseException]] = [
    asyncio.CancelledError,
    GeneratorExit,
    SystemExit,
    KeyboardInterrupt,
    StopIteration,
]


def raising(escape: type[BaseException], sync: bool) -> Any:
    if sync:

        def handler(payload: Any) -> None:
            raise escape("from the handler")

        return handler

    async def handler_async(payload: Any) -> None:
        raise escape("from the handler")

    return handler_async


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_handler_raising_a_base_exception_fails_its_attempt(
    app: Conveyor, kind: str
) -> None:
    for escape in ESCAPES:
        app.job(f"odd.{escape.__name__}", retries=0, timeout=None)(raising(escape, kind == "sync"))

    @app.job("fine")
    async def fine(payload: Any) -> str:
        return "ok"

    odd = {e.__name__: await app.enqueue(f"odd.{e.__name__}", {}) for e in ESCAPES}
    after = await app.enqueue("fine", {})
    ran = {job.id: job for job in await asyncio.wait_for(app.drain(), 60)}
    for name, job in odd.items():
        done = ran[job.id]
        assert done.state is JobState.FAILED and name in (done.error or ""), done
    assert ran[after.id].state is JobState.COMPLETED  # the worker went on


async def test_lone_surrogates_are_refused_as_data_and_escaped_in_messages(
    app: Conveyor,
) -> None:
    @app.job("logs", retries=0)
    async def logs(payload: Any, ctx: JobContext) -> str:
        ctx.log("saw report-\udcff.csv", file="report-\udcff.csv")
        return "ok"

    @app.job("result", retries=0)
    async def result(payload: Any) -> str:
        return "report-\udcff.csv"

    @app.job("error", retries=0)
    async def error(payload: Any) -> None:
        raise ValueError("report-\udcff.csv is broken")

    with pytest.raises(InvalidPayloadError, match="surrogate"):
        await app.enqueue("logs", {"file": "report-\udcff.csv"})
    logged, returned, raised = [await app.enqueue(n, {}) for n in ("logs", "result", "error")]
    ran = {job.id: job for job in await asyncio.wait_for(app.drain(), 60)}
    assert ran[logged.id].state is JobState.COMPLETED
    stored = await app.get_job(logged.id)
    assert stored is not None and stored.logs[0]["msg"] == "saw report-\\udcff.csv"
    assert stored.logs[0]["file"] == "report-\\udcff.csv"
    assert ran[returned.id].state is JobState.FAILED
    assert "surrogate" in (ran[returned.id].error or "")
    failed = await app.get_job(raised.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert "report-\\udcff.csv" in (failed.error or "")
    assert "report-\\udcff.csv" in (failed.traceback or "")
