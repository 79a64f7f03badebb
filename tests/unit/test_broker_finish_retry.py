"""A finish whose broker call fails is sent again by the worker: the second
try must still accept the outcomes and do the broker's part, or completed
jobs would run again (their message never deleted) and the worker would
report them as lost. On SQS (moto's server), with a store and without."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import BackendUnavailableError, Conveyor
from conveyor.backends.base import Outcome, OutcomeKind, Retention

pytestmark = pytest.mark.sqs


@pytest.mark.parametrize("kind", ["sqs", "sqs_bare"])
async def test_a_finish_retried_after_a_broker_failure_is_accepted_and_done(
    kind: str, request: pytest.FixtureRequest
) -> None:
    make: Callable[[], str] = request.getfixturevalue(f"{kind}_urls")
    app = Conveyor(make())

    @app.job("work")
    async def work(payload: Any) -> None:
        return None

    async with app:
        backend: Any = app.backend
        await app.enqueue("work", {})
        (job,) = await backend.claim(["default"], 1, 1.0)
        assert job.token is not None
        done = Outcome(job.id, job.token, OutcomeKind.COMPLETED, time.time(), result="1")

        real_delete = backend.broker.delete
        calls = 0

        async def flaky_delete(*args: Any) -> list[bool]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise BackendUnavailableError("connection reset (injected)")
            result: list[bool] = await real_delete(*args)
            return result

        backend.broker.delete = flaky_delete
        with pytest.raises(BackendUnavailableError):
            await backend.finish([done], Retention())
        assert await backend.finish([done], Retention()) == [True]
        assert calls == 2
        await asyncio.sleep(1.5)  # past the lease: a message left behind would be back
        assert await backend.claim(["default"], 1, 30.0) == []
        if app.backend.capabilities.lookup:
            stored = await app.get_job(job.id)
            assert stored is not None and stored.state.value == "completed"
