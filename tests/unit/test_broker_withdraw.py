"""A broker with a store withdraws from the store the jobs whose delivery
it could not confirm, so they cannot run behind the caller's back, and says
so. A job a worker took meanwhile (the send went out, its reply was lost)
cannot be withdrawn: it is enqueued, and the caller must not be told to
enqueue it again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, EnqueueFailedError, JobState

pytestmark = pytest.mark.sqs


def _break_sends(app: Conveyor, monkeypatch: pytest.MonkeyPatch, deliver: bool) -> None:
    """Every send_message_batch fails; with `deliver`, after it went out and a
    worker's claim took what it sent (a reply lost on the way back)."""
    client = app.backend.broker  # type: ignore[attr-defined]
    call = client.call

    async def lost_reply(operation: str, **kwargs: Any) -> Any:
        if operation != "send_message_batch":
            return await call(operation, **kwargs)
        if deliver:
            await call(operation, **kwargs)
            taken = await app.backend.claim(["default"], 10, 30.0)
            assert taken
        raise ConnectionError("the reply was lost")

    monkeypatch.setattr(client, "call", lost_reply)


async def test_a_job_that_went_out_after_all_is_not_said_withdrawn(
    sqs_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Conveyor(sqs_urls())
    app.declare("n")
    async with app:
        _break_sends(app, monkeypatch, deliver=True)
        job = await app.enqueue("n", {}, key="k")
        stored = await app.get_job(job.id)
        assert stored is not None and stored.state is JobState.RUNNING
        again = await app.enqueue("n", {}, key="k")
        assert again.duplicate and again.id == job.id


async def test_a_job_that_did_not_go_out_is_withdrawn_and_its_key_free(
    sqs_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Conveyor(sqs_urls())
    app.declare("n")
    async with app:
        _break_sends(app, monkeypatch, deliver=False)
        with pytest.raises(EnqueueFailedError, match="withdrawn from the store") as caught:
            await app.enqueue("n", {}, key="k")
        [failed] = caught.value.failed
        assert await app.get_job(failed) is None
        monkeypatch.undo()
        fresh = await app.enqueue("n", {}, key="k")
        assert not fresh.duplicate
