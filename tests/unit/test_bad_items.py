"""Bad input names what was bad: the item of a batch, a payload that is not
JSON, a payload over the size limit. Nothing is stored in each case."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import Conveyor, InvalidOptionError, InvalidPayloadError, UnknownJobError
from conveyor.backends.memory import MemoryBackend


class Blob(BaseModel):
    data: bytes


@pytest.fixture
async def app() -> AsyncIterator[Conveyor]:
    app = Conveyor("memory://", max_payload_bytes=1000)

    @app.job("blob")
    async def blob(payload: Blob) -> None:
        return None

    @app.job("free")
    async def free(payload: Any) -> None:
        return None

    async with app:
        yield app


GOOD = ("free", {"n": 1})
BAD_ITEMS: list[tuple[Any, type[Exception]]] = [
    (("free",), InvalidOptionError),
    ("free", InvalidOptionError),
    (("nope", {}), UnknownJobError),
    ((1, {}), UnknownJobError),
    (("blob", 5), InvalidPayloadError),
    (("free", {1, 2}), InvalidPayloadError),
    (("free", {}, 5), InvalidOptionError),
    (("free", {}, {"bogus": 1}), InvalidOptionError),
    (("free", {}, {"delay": -1}), InvalidOptionError),
    (("free", {}, {"priority": "x"}), InvalidOptionError),
    (("free", {}, {"key": ""}), InvalidOptionError),
    (("free", {}, {"delay": 1, "run_at": 2}), InvalidOptionError),
]


@pytest.mark.parametrize(("item", "error"), BAD_ITEMS, ids=[repr(i) for i, _ in BAD_ITEMS])
async def test_every_bad_batch_item_is_named_by_its_index(
    app: Conveyor, item: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"^enqueue_many item 2: "):
        await app.enqueue_many([GOOD, GOOD, item, GOOD])
    assert await app.list_jobs() == []


async def test_an_unknown_option_lists_the_known_ones(app: Conveyor) -> None:
    with pytest.raises(InvalidOptionError, match=r"'bogus'.*known: delay, group, key, priority"):
        await app.enqueue_many([("free", {}, {"bogus": 1})])


async def test_bytes_that_are_not_utf8_are_an_invalid_payload(app: Conveyor) -> None:
    with pytest.raises(InvalidPayloadError, match="payload of job 'blob' is not JSON"):
        await app.enqueue("blob", Blob(data=b"\xff\xfe"))
    assert await app.list_jobs() == []
    await app.enqueue("blob", Blob(data=b"fine"))


async def test_a_payload_over_the_limit_is_refused_with_its_size(app: Conveyor) -> None:
    with pytest.raises(InvalidPayloadError, match=r"1,011 bytes of JSON, over the limit of 1,000"):
        await app.enqueue("free", {"text": "x" * 1000})
    with pytest.raises(InvalidPayloadError, match="over the limit"):
        await app.enqueue("free", {"text": "é" * 495})  # counted in bytes, not characters
    assert await app.list_jobs() == []
    await app.enqueue("free", {"text": "x" * 980})


async def test_the_default_limit_is_one_mebibyte_and_none_lifts_it() -> None:
    big = {"text": "x" * (1024 * 1024)}
    async with Conveyor("memory://") as app:
        app.job("free")(lambda payload: None)
        with pytest.raises(InvalidPayloadError, match="over the limit of 1,048,576"):
            await app.enqueue("free", big)
    async with Conveyor("memory://", max_payload_bytes=None) as app:
        app.job("free")(lambda payload: None)
        assert (await app.enqueue("free", big)).payload == big


async def test_a_backend_limit_lower_than_the_apps_wins() -> None:
    backend = MemoryBackend()
    backend.capabilities = dataclasses.replace(backend.capabilities, max_payload_bytes=100)  # type: ignore[misc]
    async with Conveyor("memory://", backend=backend) as app:
        app.job("free")(lambda payload: None)
        with pytest.raises(InvalidPayloadError, match="over the limit of 100 "):
            await app.enqueue("free", {"text": "x" * 100})


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1"])
def test_max_payload_bytes_is_checked(bad: Any) -> None:
    with pytest.raises(InvalidOptionError, match="max_payload_bytes"):
        Conveyor("memory://", max_payload_bytes=bad)
