"""SQS caps a batch call's total size (256 KiB on the classic limit), not
only its count: payloads the backend accepts one by one go out in batches
too, and a batch call that fails names only its own jobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor import Conveyor, EnqueueFailedError
from conveyor.backends.sqs.client import BATCH_BYTES

pytestmark = pytest.mark.sqs


async def test_big_payloads_enqueue_in_batches(sqs_bare_urls: Callable[[], str]) -> None:
    app = Conveyor(sqs_bare_urls())
    app.declare("big")
    async with app:
        body = "x" * (150 * 1024)  # within one message's limit; ten exceed a batch's
        made = await app.enqueue_many([("big", {"n": n, "body": body}) for n in range(12)])
        assert len(made) == 12
        stats = await app.stats()
        assert sum(stats["default"].values()) == 12, stats


async def test_a_failed_batch_call_names_only_its_jobs(
    sqs_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Conveyor(sqs_bare_urls())
    app.declare("big")
    async with app:
        client = app.backend.broker  # type: ignore[attr-defined]
        send = client.call
        calls = 0

        async def second_batch_fails(operation: str, **kwargs: object) -> object:
            nonlocal calls
            if operation == "send_message_batch":
                calls += 1
                if calls == 2:
                    raise ConnectionError("dropped")
            return await send(operation, **kwargs)

        monkeypatch.setattr(client, "call", second_batch_fails)
        body = "x" * (BATCH_BYTES // 3)  # two a batch
        with pytest.raises(EnqueueFailedError) as caught:
            await app.enqueue_many([("big", {"n": n, "body": body}) for n in range(6)])
        assert len(caught.value.failed) == 2  # the second batch's, not all six
