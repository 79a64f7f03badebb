"""A bare broker's finish does its broker calls one after another (send a
retry or a dead letter, then change visibilities, then delete). When a later
call fails, the worker sends the whole batch again: what went out on the
first try must not go out twice, or the job runs twice (a retry republished
twice; a failed job dead-lettered twice, so a redrive runs it twice). And a
delete the broker failed on its side (not the sender's fault) is tried again,
not taken for a lost lease: the completed job would run again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_sqlite_backend import new_job

from conveyor import BackendUnavailableError
from conveyor.backends import from_url
from conveyor.backends.base import Outcome, OutcomeKind, Retention
from conveyor.backends.broker.types import Outgoing

BARE = [
    pytest.param("sqs_bare", marks=pytest.mark.sqs),
    pytest.param("pubsub_bare", marks=pytest.mark.pubsub),
]


async def _open(kind: str, request: pytest.FixtureRequest) -> Any:
    make: Callable[[], str] = request.getfixturevalue(f"{kind}_urls")
    backend: Any = from_url(make())
    await backend.open()
    return backend


def _count_sends(backend: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []
    real_send = backend.broker.send

    async def counting_send(name: str, out: list[Outgoing]) -> dict[str, str]:
        failures: dict[str, str] = await real_send(name, out)
        sent.extend((name, m.entry_id) for m in out if m.entry_id not in failures)
        return failures

    monkeypatch.setattr(backend.broker, "send", counting_send)
    return sent


def _delete_fails_once(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real_delete = backend.broker.delete
    calls = 0

    async def delete(name: str, receipts: list[str]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BackendUnavailableError("connection reset (injected)")
        done: list[bool] = await real_delete(name, receipts)
        return done

    monkeypatch.setattr(backend.broker, "delete", delete)


@pytest.mark.parametrize("kind", BARE)
async def test_a_dead_letter_is_sent_once_when_the_finish_is_sent_again(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await _open(kind, request)
    try:
        await backend.enqueue([new_job(max_retries=0)])
        [job] = await backend.claim(["default"], 1, 30.0)
        dlq = await backend.broker.dead_letter_queue(backend.config.queue_name("default"))
        assert dlq is not None
        sent = _count_sends(backend, monkeypatch)
        _delete_fails_once(backend, monkeypatch)
        failed = Outcome(job.id, job.token or "", OutcomeKind.FAILED, time.time(), error="boom")
        with pytest.raises(BackendUnavailableError):
            await backend.finish([failed], Retention())
        assert await backend.finish([failed], Retention()) == [True]
        assert sent == [(dlq, str(job.id))], "the failed job went to the dead letters twice"
    finally:
        await backend.close()


@pytest.mark.pubsub
async def test_a_republished_retry_goes_out_once_when_the_finish_is_sent_again(
    pubsub_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend: Any = from_url(pubsub_bare_urls())
    await backend.open()
    try:
        assert backend.facts.retry_by_republish
        await backend.enqueue([new_job()])
        [job] = await backend.claim(["default"], 1, 30.0)
        queue = backend.config.queue_name("default")
        sent = _count_sends(backend, monkeypatch)
        _delete_fails_once(backend, monkeypatch)
        # A backoff longer than the message can stay hidden: republished.
        wait = backend.facts.max_visibility + 60
        retry = Outcome(
            job.id, job.token or "", OutcomeKind.SCHEDULED, time.time(), error="boom", retry_in=wait
        )
        with pytest.raises(BackendUnavailableError):
            await backend.finish([retry], Retention())
        assert await backend.finish([retry], Retention()) == [True]
        assert sent == [(queue, str(job.id))], "the retry was republished twice"
    finally:
        await backend.close()


@pytest.mark.pubsub
async def test_a_retry_republished_before_another_failed_is_not_republished_again(
    pubsub_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two retries in one batch; the second's publish fails twice, so the
    # batch is sent three times: the first retry still goes out once.
    backend: Any = from_url(pubsub_bare_urls())
    await backend.open()
    try:
        await backend.enqueue([new_job(), new_job()])
        jobs = await backend.claim(["default"], 2, 30.0)
        assert len(jobs) == 2
        wait = backend.facts.max_visibility + 60
        retries = [
            Outcome(j.id, j.token or "", OutcomeKind.SCHEDULED, time.time(), retry_in=wait)
            for j in jobs
        ]
        real_send = backend.broker.send
        refusals = 0
        sent: list[str] = []

        async def second_refused(name: str, out: list[Outgoing]) -> dict[str, str]:
            nonlocal refusals
            if any(m.entry_id == str(jobs[1].id) for m in out) and refusals < 2:
                refusals += 1
                return {m.entry_id: "UNAVAILABLE (injected)" for m in out}
            failures: dict[str, str] = await real_send(name, out)
            sent.extend(m.entry_id for m in out if m.entry_id not in failures)
            return failures

        monkeypatch.setattr(backend.broker, "send", second_refused)
        for _ in range(2):
            with pytest.raises(BackendUnavailableError):
                await backend.finish(retries, Retention())
        assert await backend.finish(retries, Retention()) == [True, True]
        assert sorted(sent) == sorted(str(j.id) for j in jobs)
    finally:
        await backend.close()


@pytest.mark.sqs
async def test_a_delete_the_broker_failed_on_its_side_is_tried_again(
    sqs_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend: Any = from_url(sqs_bare_urls())
    await backend.open()
    try:
        await backend.enqueue([new_job() for _ in range(3)])
        jobs: list[Any] = []
        while len(jobs) < 3:
            jobs += await backend.claim(["default"], 3 - len(jobs), 1.0)
        client = backend.broker
        real_call = client.call
        dropped = 0

        async def first_entry_fails_once(operation: str, **kwargs: Any) -> Any:
            nonlocal dropped
            if operation != "delete_message_batch" or dropped:
                return await real_call(operation, **kwargs)
            dropped += 1
            first, *rest = kwargs["Entries"]
            reply = await real_call(operation, **{**kwargs, "Entries": rest})
            failure = {"Id": first["Id"], "Code": "InternalError", "SenderFault": False}
            return {**reply, "Failed": [*reply.get("Failed", []), failure]}

        monkeypatch.setattr(client, "call", first_entry_fails_once)
        done = [
            Outcome(j.id, j.token or "", OutcomeKind.COMPLETED, time.time(), result="1")
            for j in jobs
        ]
        assert await backend.finish(done, Retention()) == [True, True, True]
        assert dropped == 1
        monkeypatch.undo()
        await asyncio.sleep(1.5)  # past the 1 s lease: a message not deleted is back
        assert await backend.claim(["default"], 3, 30.0) == [], "a completed job came back"
    finally:
        await backend.close()


@pytest.mark.sqs
async def test_a_bad_entry_stays_failed_when_another_is_retried(
    sqs_bare_urls: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One batch: entry "a" is the sender's fault (refused for good), "b" SQS
    # failed on its side (tried again, then sent). "a" must still be named
    # failed: an answer kept from the last try only called it sent.
    backend: Any = from_url(sqs_bare_urls())
    await backend.open()
    try:
        client = backend.broker
        real_call = client.call
        tries = 0

        async def first_try_fails_both(operation: str, **kwargs: Any) -> Any:
            nonlocal tries
            if operation != "send_message_batch":
                return await real_call(operation, **kwargs)
            tries += 1
            if tries == 1:
                return {
                    "Failed": [
                        {"Id": "a", "Code": "InvalidMessageContents", "SenderFault": True},
                        {"Id": "b", "Code": "InternalError", "SenderFault": False},
                    ]
                }
            return await real_call(operation, **kwargs)

        monkeypatch.setattr(client, "call", first_try_fails_both)
        queue = backend.config.queue_name("default")
        failures = await client.send(queue, [Outgoing("a", "{}"), Outgoing("b", "{}")])
        assert tries == 2 and list(failures) == ["a"]
    finally:
        await backend.close()
