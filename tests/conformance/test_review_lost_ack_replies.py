"""Review: an acknowledgement the backend applied but whose reply was lost.

The worker puts the batch back and sends it again; the backend, which
already applied it, refuses the resend (the job no longer runs under that
token). The worker takes the refusal for a lost lease: it logs "refused: its
lease was lost" and emits no event, so `job.completed` never fires for a job
that did complete."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import JobState
from conveyor.backends import from_url
from conveyor.events import Event

from .conftest import MakeApp, needs
from .helpers import WAIT, eventually

pytestmark = needs("lookup")


class LosesAckReplies:
    """A real backend whose first acknowledgement (finish, or finish_and_claim
    carrying outcomes) is applied, but whose reply never reaches the worker."""

    _ACKS = ("finish", "finish_and_claim")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.lost: list[str] = []  # the calls whose reply was lost

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._ACKS:
            return attr
        return self._lossy(name, attr)

    def _lossy(self, name: str, call: Callable[..., Awaitable[Any]]) -> Any:
        async def ack(outcomes: Any, *args: Any, **kwargs: Any) -> Any:
            reply = await call(outcomes, *args, **kwargs)
            if outcomes and not self.lost:
                self.lost.append(name)
                raise ConnectionError("connection reset: the acknowledgement's reply was lost")
            return reply

        return ack


async def test_a_completion_whose_acknowledgement_reply_was_lost_still_fires_job_completed(
    make_app: MakeApp, backend_url: str, worker: Callable[..., Any]
) -> None:
    """A completion stored by the backend whose reply was lost is resent, refused
    as if the lease had been lost, and its job.completed event never fires."""
    lossy = LosesAckReplies(from_url(backend_url))
    app = await make_app(backend=lossy)
    completed: list[str] = []

    @app.job("work", retries=0)
    async def work(payload: Any) -> str:
        return "ran"

    @app.on("job.completed")
    def on_completed(event: Event) -> None:
        completed.append(event.job.id)

    job = await app.enqueue("work", {})
    async with worker(app):
        done = await app.wait(job.id, timeout=WAIT)
        assert done.state is JobState.COMPLETED
        # The completion is visible as soon as the backend commits it, which
        # can be before the worker's call returns and records the lost reply.
        await eventually(lambda: bool(lossy.lost), timeout=5, message="the lost reply")
        await eventually(
            lambda: completed == [job.id],
            timeout=5,
            message=f"job.completed for the job (events: {completed})",
        )
