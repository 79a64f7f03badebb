"""`app.declare`: a job type without a handler, for producers (issue 8, point 2),
and the typed `result` of a handle (point 3), on the memory backend. Workers
serving declarations run on every backend in tests/conformance/test_declare.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import (
    Backoff,
    Conveyor,
    InvalidOptionError,
    InvalidPayloadError,
    JobContext,
    JobFailedError,
    JobState,
    Permanent,
    UnknownJobError,
)

FAST = {"heartbeat_interval": 0.05, "recover_interval": 0.05, "poll_interval": 0.05}


class Welcome(BaseModel):
    to: str
    name: str


class Receipt(BaseModel):
    to: str
    sent: bool


@pytest.fixture
async def app() -> AsyncIterator[Conveyor]:
    conveyor = Conveyor("memory://")
    yield conveyor
    await conveyor.close()


async def test_a_declared_type_validates_and_enqueues_with_its_defaults(app: Conveyor) -> None:
    welcome = app.declare("email.welcome", Welcome, retries=5, timeout=12, priority=3, queue="mail")
    job = await welcome.enqueue(Welcome(to="a@b.c", name="A"))
    assert (job.name, job.queue, job.priority, job.max_retries, job.timeout) == (
        "email.welcome",
        "mail",
        3,
        5,
        12.0,
    )
    assert job.payload == {"to": "a@b.c", "name": "A"}
    # By name too, as a producer that only declared it would.
    by_name = await app.enqueue("email.welcome", {"to": "b@b.c", "name": "B"}, priority=1)
    assert (by_name.queue, by_name.priority, by_name.max_retries) == ("mail", 1, 5)
    with pytest.raises(InvalidPayloadError, match=r"email\.welcome.*name"):
        await app.enqueue("email.welcome", {"to": "c@b.c"})
    with pytest.raises(InvalidPayloadError):
        await welcome.enqueue({"to": 3})  # type: ignore[arg-type]
    assert (await app.stats())["mail"]["queued"] == 2  # nothing stored on error


async def test_a_declaration_without_a_model_takes_any_json(app: Conveyor) -> None:
    report = app.declare("report.build")
    job = await report.enqueue({"rows": [1, 2]})
    assert (job.queue, job.max_retries, job.timeout, job.payload) == (
        "default",
        3,
        30.0,
        {"rows": [1, 2]},
    )
    job = await asyncio.to_thread(app.enqueue_sync, "report.build", [1])
    assert job.payload == [1]


async def test_a_name_neither_registered_nor_declared_still_fails(app: Conveyor) -> None:
    app.declare("email.welcome", Welcome)
    with pytest.raises(UnknownJobError, match=r"email\.welcom'.*email\.welcome.*declare"):
        await app.enqueue("email.welcom", {"to": "a@b.c", "name": "A"})
    with pytest.raises(UnknownJobError):
        await asyncio.to_thread(app.enqueue_sync, "email.welcom", {})


def test_declaring_again_with_the_same_settings_gives_the_same_handle() -> None:
    app = Conveyor("memory://")
    first = app.declare("t", Welcome, retries=1, backoff=Backoff.fixed(2))
    assert app.declare("t", Welcome, retries=1, backoff=Backoff.fixed(2)) is first
    assert repr(first) == "<JobType 't' (declared, no handler)>"
    with pytest.raises(TypeError, match="without a handler"):
        first(Welcome(to="a", name="b"))


@pytest.mark.parametrize(
    ("options", "differs"),
    [
        ({"retries": 4}, "retries=4"),
        ({"timeout": None}, "timeout=None"),
        ({"priority": 1}, "priority=1"),
        ({"queue": "other"}, "queue='other'"),
        ({"backoff": 5}, "backoff"),
        ({"payload_model": Receipt}, "payload_model"),
        ({"payload_model": None}, "payload_model"),
    ],
)
def test_conflicting_declarations_and_registrations_are_refused(
    options: dict[str, Any], differs: str
) -> None:
    settings: dict[str, Any] = {"payload_model": Welcome, "retries": 3, "queue": "mail"}
    changed = {**settings, **options}

    # declared twice
    app = Conveyor("memory://")
    app.declare("t", **settings)
    with pytest.raises(InvalidOptionError, match=rf"'t' is already declared.*{differs}"):
        app.declare("t", **changed)

    # declared, then registered differently
    app = Conveyor("memory://")
    declared = app.declare("t", **settings)
    model = changed.pop("payload_model")
    with pytest.raises(InvalidOptionError, match=rf"'t' is already declared.*{differs}"):
        app.job("t", **changed)(_handler_for(model))
    assert app.registry["t"] is declared and declared.handler is None

    # registered, then declared differently
    app = Conveyor("memory://")
    app.job("t", retries=3, queue="mail")(_handler_for(Welcome))
    with pytest.raises(InvalidOptionError, match=rf"'t' is already registered.*{differs}"):
        app.declare("t", model, **changed)


def _handler_for(model: type[BaseModel] | None) -> Any:
    if model is None:

        async def untyped(payload: Any) -> None:
            return None

        return untyped

    async def typed(payload: model) -> None:  # type: ignore[valid-type]
        return None

    typed.__annotations__["payload"] = model
    return typed


async def test_registering_the_handler_completes_the_declaration(app: Conveyor) -> None:
    declared = app.declare("email.welcome", Welcome, retries=2, queue="mail")
    assert app.worker().names == ()
    assert app.worker().queues == ("default",)  # a declared type's queue is not served

    @app.job("email.welcome", retries=2, queue="mail")
    async def welcome(payload: Welcome, ctx: JobContext) -> Receipt:
        return Receipt(to=payload.to, sent=True)

    assert welcome is declared and declared.handler is not None
    assert app.declare("email.welcome", Welcome, retries=2, queue="mail") is welcome
    assert app.worker().names == ("email.welcome",)
    assert app.worker().queues == ("default", "mail")
    with pytest.raises(InvalidOptionError, match="already registered"):
        app.job("email.welcome", retries=2, queue="mail")(welcome.handler)  # type: ignore[arg-type]


async def test_result_returns_the_handlers_return_type(app: Conveyor) -> None:
    @app.job("receipt")
    async def receipt(payload: Welcome) -> Receipt:
        return Receipt(to=payload.to, sent=True)

    @app.job("pair")
    def pair(payload: int) -> tuple[int, int]:
        return (payload, payload + 1)

    @app.job("broken", retries=0)
    async def broken(payload: Any) -> None:
        raise Permanent("no")

    sent = await receipt.enqueue(Welcome(to="a@b.c", name="A"))
    two = await pair.enqueue(1)
    bad = await broken.enqueue(None)
    async with app.worker(**FAST):
        assert await receipt.result(sent, timeout=10) == Receipt(to="a@b.c", sent=True)
        assert await pair.result(two.id, timeout=10) == (1, 2)
        with pytest.raises(JobFailedError, match="failed") as failed:
            await broken.result(bad, timeout=10)
        assert failed.value.job.state is JobState.FAILED
        with pytest.raises(InvalidOptionError, match="'pair' job, not 'receipt'"):
            await receipt.result(two)
        # The blocking twin, from a thread as sync code would call it.
        assert await asyncio.to_thread(pair.result_sync, two) == (1, 2)
