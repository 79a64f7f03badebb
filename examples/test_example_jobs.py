"""Testing your jobs (README): run with `pytest examples/test_example_jobs.py`.

In your project the app and its jobs live in your own module (with
CONVEYOR_URL=memory:// set for the tests); here they are inline.
"""

from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from conveyor import Conveyor, JobContext, JobState, Permanent, testing

app = Conveyor("memory://")
outbox: list[str] = []  # stands in for your mail server


class Signup(BaseModel):
    email: str


@app.job("email.welcome", retries=2, backoff=60)
def send_welcome(payload: Signup, ctx: JobContext) -> dict[str, bool]:
    outbox.append(payload.email)
    return {"sent": True}


@app.job("user.signup")
async def on_signup(payload: Signup) -> None:
    await send_welcome.enqueue(payload)  # a job that enqueues a job


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    """Each test starts with no jobs and an empty outbox."""
    yield
    outbox.clear()
    app.purge_sync(["queued", "scheduled", "completed", "failed", "cancelled"])


def test_signup_sends_a_welcome_email() -> None:
    app.enqueue_sync("user.signup", {"email": "ada@example.com"})
    ran = app.drain_sync()  # runs the signup, then the welcome it enqueued
    assert [(job.name, job.state) for job in ran] == [
        ("user.signup", JobState.COMPLETED),
        ("email.welcome", JobState.COMPLETED),
    ]
    assert outbox == ["ada@example.com"]


def test_a_failed_send_is_retried_after_its_backoff() -> None:
    with testing.FakeClock(app) as clock:
        testing.fail_next(app, "email.welcome", exc=ConnectionError("smtp down"))
        send_welcome.enqueue_sync(Signup(email="bob@example.com"))
        [job] = app.drain_sync()
        assert job.state is JobState.SCHEDULED  # waiting 60 s before its retry
        assert outbox == []
        clock.advance(60)  # no sleeping: the retry is due now
        [job] = app.drain_sync()
        assert (job.state, job.attempts) == (JobState.COMPLETED, 2)
        assert outbox == ["bob@example.com"]


def test_a_permanent_failure_is_not_retried() -> None:
    testing.fail_next(app, "email.welcome", exc=Permanent("address bounced"))
    send_welcome.enqueue_sync(Signup(email="eve@example.com"))
    [job] = app.drain_sync()
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert "address bounced" in (job.error or "")


def test_a_delayed_reminder_waits_for_its_time() -> None:
    with testing.FakeClock(app) as clock:
        send_welcome.enqueue_sync(Signup(email="joe@example.com"), delay=86400)
        assert app.drain_sync() == []  # due tomorrow
        clock.advance(86400)
        assert [job.state for job in app.drain_sync()] == [JobState.COMPLETED]
