"""A FIFO queue's deduplication id is at most 128 characters of letters,
digits and punctuation: a key that is not such an id goes as a digest of
itself (the same key, the same id), never to be refused by AWS."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor

pytestmark = pytest.mark.sqs

VALID = re.compile(r"""[A-Za-z0-9!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}""")


@pytest.mark.parametrize("key", ["k" * 200, "with space", "grüße", "plain-key:1"])
async def test_every_key_makes_a_valid_deduplication_id(
    sqs_fifo_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    app = Conveyor(sqs_fifo_bare_urls())
    app.declare("n")
    async with app:
        client = app.backend.broker  # type: ignore[attr-defined]
        call = client.call
        sent: list[str] = []

        async def spy(operation: str, **kwargs: Any) -> Any:
            if operation == "send_message_batch":
                sent.extend(e["MessageDeduplicationId"] for e in kwargs["Entries"])
            return await call(operation, **kwargs)

        monkeypatch.setattr(client, "call", spy)
        await app.enqueue("n", {}, key=key)
        await app.enqueue("n", {}, key=key)
    assert len(sent) == 2 and sent[0] == sent[1]
    assert VALID.fullmatch(sent[0]), sent[0]
    if VALID.fullmatch(key):
        assert sent[0] == key  # a valid key goes as it is
