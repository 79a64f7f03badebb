"""A broker with a store withdraws from the store the jobs whose delivery
it could not confirm, so they cannot run behind the caller's back, and says
so. A job a worker took meanwhile (the send went out, its reply was lost)
cannot be withdrawn: it is enqueued, and the caller must not be told to
enqueue it again. On each broker that keeps a store (SQS, Pub/Sub)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, EnqueueFailedError, JobState
from conveyor.backends.base import Outcome, OutcomeKind, Retention
from conveyor.backends.broker.types import Outgoing

BROKERS = [
    pytest.param("sqs_urls", marks=pytest.mark.sqs),
    pytest.param("pubsub_urls", marks=pytest.mark.pubsub),
]


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest) -> Conveyor:
    urls: Callable[[], str] = request.getfixturevalue(request.param)
    app = Conveyor(urls())
    app.declare("n")
    return app


def break_sends(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, deliver: bool, then: str = "running"
) -> None:
    """Every send fails; with `deliver`, after it went out and a worker's
    claim took what it sent (a reply lost on the way back), and (`then`)
    still runs it, failed it (it waits for its retry), or completed it (and
    retention dropped it at once)."""
    broker = app.backend.broker  # type: ignore[attr-defined]
    send = broker.send

    async def lost_reply(name: str, messages: list[Outgoing]) -> dict[str, str]:
        if deliver:
            assert not await send(name, messages)
            taken: list[Any] = []
            while not taken:
                taken = await app.backend.claim(["default"], 10, 30.0)
            outcomes = [
                Outcome(job.id, job.token or "", kind, time.time(), retry_in=3600)
                for job in taken
                for kind in [OUTCOMES[then]]
                if kind is not None
            ]
            if outcomes:
                await app.backend.finish(outcomes, Retention(keep_completed=0))
        raise ConnectionError("the reply was lost")

    monkeypatch.setattr(broker, "send", lost_reply)


OUTCOMES = {
    "running": None,
    "waiting for its retry": OutcomeKind.SCHEDULED,
    "finished and dropped": OutcomeKind.COMPLETED,
}


@pytest.mark.parametrize("then", list(OUTCOMES))
async def test_a_job_that_went_out_after_all_is_not_said_withdrawn(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    async with app:
        break_sends(app, monkeypatch, deliver=True, then=then)
        job = await app.enqueue("n", {}, key="k")  # no EnqueueFailedError
        stored = await app.get_job(job.id)
        if then == "finished and dropped":
            assert stored is None
            return
        expected = JobState.RUNNING if then == "running" else JobState.SCHEDULED
        assert stored is not None and stored.state is expected and stored.attempts == 1
        again = await app.enqueue("n", {}, key="k")
        assert again.duplicate and again.id == job.id


async def test_a_job_that_did_not_go_out_is_withdrawn_and_its_key_free(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with app:
        break_sends(app, monkeypatch, deliver=False)
        with pytest.raises(EnqueueFailedError, match="withdrawn from the store") as caught:
            await app.enqueue("n", {}, key="k")
        [failed] = caught.value.failed
        assert await app.get_job(failed) is None
        monkeypatch.undo()
        fresh = await app.enqueue("n", {}, key="k")
        assert not fresh.duplicate
