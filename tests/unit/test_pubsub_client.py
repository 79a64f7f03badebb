"""PubSubClient against gcloud's Pub/Sub emulator: the SQSClient-shaped
calls, and what the emulator does (recorded in conveyor/backends/pubsub's
docstring)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from conveyor.backends.broker.types import Outgoing, Received
from conveyor.backends.pubsub import client as client_module
from conveyor.backends.pubsub import errors, wire
from conveyor.backends.pubsub.client import PubSubClient, QueueMissingError
from conveyor.backends.pubsub.url import parse_url
from conveyor.job import BackendMisconfiguredError, BackendUnavailableError

pytestmark = pytest.mark.pubsub

Maker = Callable[..., PubSubClient]


@pytest.fixture
async def clients(pubsub_bare_urls: Callable[[], str]) -> AsyncIterator[Maker]:
    """Makes clients: on a fresh topic created on first use, or on `topic`
    (not created unless create="true"), with more URL options; all closed
    after the test."""
    made: list[PubSubClient] = []

    def make(topic: str | None = None, **options: str) -> PubSubClient:
        url = pubsub_bare_urls()
        if topic is not None:
            url = url.replace("create=true", "create=false")
            url = f"pubsub://conveyor-test/{topic}?{url.partition('?')[2]}"
        for name, value in options.items():
            url += f"&{name}={value}"
        client = PubSubClient(parse_url(url))
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def _messages(count: int, group: str | None = None, prefix: str = "m") -> list[Outgoing]:
    return [Outgoing(f"{prefix}{i}", f"{prefix}{i}", group=group) for i in range(count)]


async def _drain(client: PubSubClient, name: str, count: int, wait: int = 5) -> list[Received]:
    """Receive and acknowledge until `count` messages came (Pub/Sub may give
    fewer than asked for in one pull)."""
    got: list[Received] = []
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        batch = await client.receive(name, count - len(got), wait, 30)
        got += batch
        if batch:
            assert await client.delete(name, [m.receipt for m in batch]) == [True] * len(batch)
    return got


async def test_first_use_creates_the_topic_its_subscription_and_a_dead_letter_topic(
    clients: Maker,
) -> None:
    client = clients()
    topic = client.url.topic
    assert await client.queue_url(topic) == f"projects/conveyor-test/subscriptions/{topic}-conveyor"
    assert await client.dead_letter_queue(topic) == f"{topic}-dlq"
    _, subscriber = await client.client()
    made = await subscriber.get_subscription(subscription=await client.queue_url(topic))
    assert not made.enable_message_ordering  # ordered=true asks for it
    assert made.dead_letter_policy.max_delivery_attempts == 10
    assert made.ack_deadline_seconds == client_module.CREATED_ACK_DEADLINE
    assert "expiration_policy" in made and not made.expiration_policy.ttl  # never expires
    # Another conveyor queue: its own topic, subscription and dead-letter topic.
    emails = client.url.queue_name("emails")
    assert await client.queue_url(emails) == (
        f"projects/conveyor-test/subscriptions/{topic}-conveyor-emails"
    )
    assert await client.dead_letter_queue(emails) == f"{topic}-emails-dlq"
    # The dead-letter topics' subscriptions were made too, without a policy of their own.
    plain = clients(topic)
    assert await plain.queue_url(f"{topic}-dlq") == (
        f"projects/conveyor-test/subscriptions/{topic}-conveyor-dlq"
    )
    assert await plain.dead_letter_queue(f"{topic}-emails-dlq") is None
    assert await client.counts(topic) == {}  # Pub/Sub cannot count messages


async def test_a_missing_topic_is_refused_without_create(clients: Maker) -> None:
    client = clients("nowhere-to-be-found")
    for call in (
        client.queue_url("nowhere-to-be-found"),
        client.send("nowhere-to-be-found", _messages(1)),
        client.receive("nowhere-to-be-found", 1, 0, 30),
    ):
        with pytest.raises(QueueMissingError, match="create=true") as caught:
            await call
        assert isinstance(caught.value, BackendMisconfiguredError)
        assert "projects/conveyor-test/topics/nowhere-to-be-found" in str(caught.value)
        assert "subscriptions/nowhere-to-be-found-conveyor" in str(caught.value)


async def test_a_subscription_of_another_topic_is_refused(clients: Maker) -> None:
    first = clients()
    await first.queue_url(first.url.topic)
    other = clients(subscription=first.url.subscription)
    with pytest.raises(BackendMisconfiguredError, match="reads projects/conveyor-test/topics/"):
        await other.queue_url(other.url.topic)


async def test_send_receive_acknowledge(clients: Maker) -> None:
    client = clients()
    topic = client.url.topic
    sent = [Outgoing("a", '{"n": 1}', dedup="key-a"), Outgoing("b", '{"n": 2}')]
    assert await client.send(topic, sent) == {}
    got = await _drain(client, topic, 2)
    assert sorted(m.body for m in got) == ['{"n": 1}', '{"n": 2}']
    assert all(m.queue == topic and m.receives == 1 and m.message_id for m in got)
    assert await client.receive(topic, 10, 0, 30) == []  # acknowledged: gone
    assert await client.send(topic, []) == {}


async def test_a_nack_redelivers_at_once(clients: Maker) -> None:
    client = clients()
    topic = client.url.topic
    await client.send(topic, _messages(1))
    (first,) = await client.receive(topic, 10, 5, 60)
    assert await client.change_visibility(topic, [(first.receipt, 0)]) == [True]
    (again,) = await client.receive(topic, 10, 5, 60)
    assert again.message_id == first.message_id
    assert again.receives == 2  # the delivery attempt (the subscription has a dead-letter policy)


async def test_modify_ack_deadline_hides_a_message(clients: Maker) -> None:
    client = clients()
    topic = client.url.topic
    await client.send(topic, _messages(2))
    got: list[Received] = []
    while len(got) < 2:
        got += await client.receive(topic, 2, 5, 30)
    kept, let_go = got
    # 100,000 s is over Pub/Sub's 600: clamped, not refused.
    assert await client.change_visibility(
        topic, [(kept.receipt, 100_000), (let_go.receipt, 1)]
    ) == [True, True]
    await asyncio.sleep(1.5)
    back = await client.receive(topic, 10, 3, 30)
    assert [m.message_id for m in back] == [let_go.message_id]
    # Handed back, the hidden one comes at once.
    assert await client.change_visibility(topic, [(kept.receipt, 0)]) == [True]
    (again,) = await client.receive(topic, 10, 5, 30)
    assert again.message_id == kept.message_id


async def test_an_ack_id_pubsub_refuses_fails_alone(clients: Maker) -> None:
    client = clients()
    topic = client.url.topic
    await client.send(topic, _messages(1))
    (message,) = await client.receive(topic, 1, 5, 30)
    assert await client.delete(topic, [message.receipt, "not-an-ack-id"]) == [True, False]
    assert await client.change_visibility(topic, [("not-an-ack-id", 5)]) == [False]


async def test_ordering_keys_deliver_in_order_across_publish_calls(
    clients: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "PUBLISH_MAX", 4)  # 12 messages a key: 6 requests in all
    client = clients(ordered="true")
    topic = client.url.topic
    _, subscriber = await client.client()
    made = await subscriber.get_subscription(subscription=await client.queue_url(topic))
    assert made.enable_message_ordering
    keyed = zip(_messages(12, "g1", "a"), _messages(12, "g2", "b"), strict=True)
    messages = [m for pair in keyed for m in pair]
    assert await client.send(topic, messages) == {}
    # Taken a few at a time, each batch acknowledged before the next pull.
    got: list[str] = []
    while len(got) < 24:
        batch = await client.receive(topic, 5, 5, 30)
        assert batch, "a message went missing"
        got += [m.body for m in batch]
        await client.delete(topic, [m.receipt for m in batch])
    for prefix in "ab":
        assert [b for b in got if b[0] == prefix] == [f"{prefix}{i}" for i in range(12)]


async def test_ordered_needs_a_subscription_with_ordering(clients: Maker) -> None:
    made = clients()  # ordering off
    await made.queue_url(made.url.topic)
    ordered = clients(made.url.topic, ordered="true")
    with pytest.raises(BackendMisconfiguredError, match="without message ordering"):
        await ordered.queue_url(made.url.topic)


async def test_large_sends_go_in_several_publish_requests(
    clients: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = clients()
    topic = client.url.topic
    requests: list[int] = []
    publish = client._publish

    async def counted(queue: object, publisher: object, batch: list[object]) -> None:
        requests.append(len(batch))
        await publish(queue, publisher, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "_publish", counted)
    assert await client.send(topic, _messages(1_500)) == {}
    assert sorted(requests) == [500, 1_000]  # Pub/Sub's 1,000 messages a request
    # By size too: 20 messages of 30 kB where a request may carry 100 kB.
    requests.clear()
    monkeypatch.setattr(wire, "PUBLISH_MAX_BYTES", 100_000)
    big = [Outgoing(f"big{i}", "x" * 30_000) for i in range(20)]
    too_big = Outgoing("huge", "x" * 100_001)
    failures = await client.send(topic, [*big, too_big])
    assert list(failures) == ["huge"] and "over Pub/Sub's 10 MB" in failures["huge"]
    assert requests == [3] * 6 + [2]
    got = await _drain(client, topic, 1_520)
    assert len({m.message_id for m in got}) == 1_520


async def test_a_delayed_message_waits_for_its_time(clients: Maker) -> None:
    client = clients()
    topic = client.url.topic
    assert await client.send(topic, [Outgoing("later", "later", delay=2)]) == {}
    started = time.monotonic()
    assert await client.receive(topic, 10, 0, 30) == []  # pulled, and hidden until due
    (message,) = await client.receive(topic, 10, 5, 30)
    assert message.body == "later"
    assert time.monotonic() - started >= 1.5
    # The pull that found it early was a delivery attempt.
    assert message.receives == 2


async def test_wait_holds_a_pull_open_until_a_message_comes(clients: Maker) -> None:
    client = clients()
    topic = client.url.topic
    started = time.monotonic()
    assert await client.receive(topic, 10, 2, 30) == []
    assert 1.8 <= time.monotonic() - started < 4.0

    async def later() -> None:
        await asyncio.sleep(0.5)
        await client.send(topic, _messages(1))

    sender = asyncio.create_task(later())
    started = time.monotonic()
    (message,) = await client.receive(topic, 10, 10, 30)
    await sender
    assert time.monotonic() - started < 3.0  # not at the end of the wait
    assert message.body == "m0"


async def test_dead_lettering_after_max_deliveries(clients: Maker) -> None:
    client = clients(max_deliveries="5")
    topic = client.url.topic
    await client.send(topic, _messages(1))
    attempts = []
    for _ in range(5):
        (message,) = await client.receive(topic, 1, 5, 30)
        attempts.append(message.receives)
        await client.change_visibility(topic, [(message.receipt, 0)])
    assert attempts == [1, 2, 3, 4, 5]
    assert await client.receive(topic, 1, 2, 30) == []  # moved aside
    dlq = await client.dead_letter_queue(topic)
    assert dlq == f"{topic}-dlq"
    (dead,) = await client.receive(dlq, 10, 5, 30)
    assert dead.body == "m0"
    assert dead.receives == 1  # the dead-letter subscription has no policy: no count
    assert await client.delete(dlq, [dead.receipt]) == [True]


async def test_a_subscription_without_a_dead_letter_policy_counts_no_deliveries(
    clients: Maker,
) -> None:
    from google.pubsub_v1 import types

    topic = f"hand-{time.time_ns()}"
    publisher, subscriber = await clients().client()
    await publisher.create_topic(name=f"projects/conveyor-test/topics/{topic}")
    await subscriber.create_subscription(
        request=types.Subscription(
            name=f"projects/conveyor-test/subscriptions/{topic}-conveyor",
            topic=f"projects/conveyor-test/topics/{topic}",
        )
    )
    client = clients(topic)  # create=false
    assert await client.dead_letter_queue(topic) is None
    await client.send(topic, _messages(1))
    (first,) = await client.receive(topic, 1, 5, 30)
    await client.change_visibility(topic, [(first.receipt, 0)])
    (again,) = await client.receive(topic, 1, 5, 30)
    # Pub/Sub (and the emulator) say 0 without a policy: conveyor says 1, "at least once".
    assert (first.receives, again.receives) == (1, 1)


def test_one_client_serves_many_event_loops(pubsub_bare_urls: Callable[[], str]) -> None:
    client = PubSubClient(parse_url(pubsub_bare_urls()))
    topic = client.url.topic
    errors: list[BaseException] = []

    async def work(n: int) -> None:
        # Each loop gets channels of its own (gRPC's belong to their loop).
        assert await client.send(topic, _messages(5, prefix=f"loop{n}-")) == {}
        received = await client.receive(topic, 1, 5, 0)  # handed back at once
        assert len(received) == 1

    def run(n: int) -> None:
        try:
            asyncio.run(work(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def collect() -> list[Received]:
        try:
            return await _drain(client, topic, 20)
        finally:
            await client.close()

    assert len({m.body for m in asyncio.run(collect())}) == 20
    assert client._clients == {}  # the finished loops' clients dropped, the last one's closed


async def test_an_unreachable_emulator_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "RETRY_SECONDS", 0.5)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = PubSubClient(
        parse_url(f"pubsub://conveyor-test/jobs?create=true&emulator=127.0.0.1:{port}")
    )
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="unreachable"):
            await client.queue_url("jobs")
        assert time.monotonic() - started < 5
    finally:
        await client.close()


async def test_without_the_emulator_credentials_come_from_the_default_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError

    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(errors, "RETRY_SECONDS", 0.5)
    with socket.socket() as sock:  # a loopback endpoint nothing answers on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = parse_url(f"pubsub://conveyor-test/jobs?endpoint=127.0.0.1:{port}")
    assert url.emulator is None

    def missing(**_: object) -> object:
        raise DefaultCredentialsError("none here")

    monkeypatch.setattr(google.auth, "default", missing)
    client = PubSubClient(url)
    with pytest.raises(BackendMisconfiguredError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        await client.queue_url("jobs")
    # Found (stood in for by anonymous ones, so nothing leaves loopback): the
    # clients speak TLS to the endpoint, which does not answer.
    monkeypatch.setattr(google.auth, "default", lambda **_: (AnonymousCredentials(), None))
    try:
        with pytest.raises(BackendUnavailableError, match="unreachable"):
            await client.queue_url("jobs")
    finally:
        await client.close()
