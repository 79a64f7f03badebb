"""A job that failed for good goes to its queue's dead-letter queue; when
that send fails, its message must stay on the queue (where the queue's own
redrive policy, or the next delivery, still gets it to the dead-letter
queue), not be deleted with the job lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from test_sqlite_backend import new_job

from conveyor.backends import from_url
from conveyor.backends.base import Outcome, OutcomeKind, Retention
from conveyor.backends.broker.types import Outgoing

pytestmark = pytest.mark.sqs


async def test_a_failed_job_whose_dead_letter_send_fails_is_not_deleted(
    sqs_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend: Any = from_url(sqs_bare_urls())
    await backend.open()
    try:
        await backend.enqueue([new_job(max_retries=0)])
        [job] = await backend.claim(["default"], 1, 1.0)
        send = backend.broker.send
        dlq = await backend.broker.dead_letter_queue(backend.config.queue_name("default"))
        assert dlq is not None

        async def dead_letter_queue_refuses(name: str, out: list[Outgoing]) -> dict[str, str]:
            if name == dlq:
                return {m.entry_id: "ServiceUnavailable: try later" for m in out}
            return await send(name, out)

        monkeypatch.setattr(backend.broker, "send", dead_letter_queue_refuses)
        failed = Outcome(job.id, job.token or "", OutcomeKind.FAILED, time.time(), error="boom")
        await backend.finish([failed], Retention())
        monkeypatch.undo()
        again: list[Any] = []
        deadline = time.monotonic() + 10
        while not again and time.monotonic() < deadline:
            again = await backend.claim(["default"], 1, 30.0)
        assert [j.id for j in again] == [job.id], "the failed job's message was deleted"
    finally:
        await backend.close()
