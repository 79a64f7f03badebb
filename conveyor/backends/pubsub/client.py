"""Pub/Sub calls on Google's async GAPIC clients, in the shape of SQSClient.

A conveyor queue is a topic and the one subscription conveyor reads it
through (see url.py for the names). The calls, as SQSClient's:

* `queue_url(name)` resolves the topic's subscription (making the topic, its
  dead-letter topic and both subscriptions with create=true) and returns the
  subscription's path. Sending resolves it too: Pub/Sub drops what is
  published to a topic without a subscription, so nothing is sent before the
  subscription is known to exist (producers need `pubsub.subscriptions.get`).
  On Google's service, dead-lettering also needs the Pub/Sub service agent
  to be a publisher on the dead-letter topic and a subscriber on the
  subscription (IAM, which conveyor does not set; the emulator has none).
* `send` publishes in requests of up to 1,000 messages and 10 MB, 16 in
  parallel (one after the other when any message has an ordering key, or
  they could land out of order). `Outgoing.group` becomes the ordering key
  (delivered in order where the subscription has message ordering on:
  ordered=true in the URL), `dedup` an attribute (Pub/Sub deduplicates
  nothing), and `delay` a `delay` attribute
  (seconds after the publish time): Pub/Sub has no delayed delivery, so `receive` hides a
  message pulled before its time for what is left of it (600 s at most per
  pull). Each such hiding is a delivery attempt, so a delay longer than about
  (max_deliveries - 1) x 600 s ends in the dead-letter topic: long delays
  belong in a store.
* `receive` is a unary Pull of up to `limit` (at most 1,000) messages: the
  caller asks for its free slots, which is the flow control. Pull has no
  long-poll seconds: it waits for a message up to its gRPC deadline, so
  `wait` is that deadline (the time left, pulled again while time is left,
  after a pause when an empty answer came at once: it never spins), and no
  wait is a 1 s deadline, Google answering at once when it has messages
  (return_immediately is deprecated: it slows delivery down). A message
  delivered to a Pull its deadline cut off comes back when the
  subscription's ack deadline (60 s for those made here) runs out. Received
  messages are then given `visibility` seconds with ModifyAckDeadline.
* `change_visibility` is ModifyAckDeadline, clamped to Pub/Sub's 0..600 s
  (0 hands the message back at once); `delete` is Acknowledge. Both are all
  or nothing per request: a request Pub/Sub refuses for one bad ack id is
  tried id by id, so the others still count. Without exactly-once delivery
  Pub/Sub accepts an expired ack id silently, so True means "accepted".
* `Received.receives` is the delivery attempt, which Pub/Sub counts only on
  a subscription with a dead-letter policy (all that create=true makes);
  elsewhere it is 0 and conveyor says 1 (at least one).
* `counts` is {}: Pub/Sub cannot count a subscription's messages (Cloud
  Monitoring's num_undelivered_messages can, and the emulator has nothing).
* `dead_letter_queue` is the dead-letter policy's topic.

What the emulator does differently: see the package's docstring (__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from conveyor.backends.broker.types import Outgoing, Received
from conveyor.backends.broker.types import QueueMissingError as BrokerQueueMissingError
from conveyor.backends.pubsub import errors, wire
from conveyor.backends.pubsub.url import PubSubURL
from conveyor.job import BackendMisconfiguredError, BackendUnavailableError

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient, types

logger = logging.getLogger("conveyor.pubsub")

PUBLISH_PARALLEL: Final = 16  # Publish requests in flight for one send
PULL_MAX: Final = 1_000  # messages asked for by one Pull
# The deadline of a Pull asked not to wait: Google answers at once when it
# has messages (the emulator answers at once when the deadline is 1 s or less).
SHORT_PULL: Final = 1.0
PULL_PAUSE: Final = 0.25  # seconds between two Pulls whose wait came back empty at once
CREATED_ACK_DEADLINE: Final = 60  # the default ack deadline of subscriptions made here
RETENTION_SECONDS: Final = 7 * 24 * 3600  # the longest a subscription keeps messages
CALL_TIMEOUT: Final = 30.0  # seconds for one attempt of a call that does not wait
T = TypeVar("T")


class QueueMissingError(BrokerQueueMissingError):
    """The topic or its subscription does not exist and create=true was not given."""


@dataclass(slots=True)
class _Queue:
    topic: str  # projects/<p>/topics/<t>
    subscription: str  # projects/<p>/subscriptions/<s>
    dead_letter: str | None  # the dead-letter topic (an id, or a path in another project)
    ack_deadline: int  # the subscription's own, what a pulled message starts with


class PubSubClient:
    def __init__(self, url: PubSubURL) -> None:
        self.url = url
        self._clients: dict[
            asyncio.AbstractEventLoop, tuple[PublisherAsyncClient, SubscriberAsyncClient]
        ] = {}
        self._credentials: Any = None
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ clients

    async def client(self) -> tuple[PublisherAsyncClient, SubscriberAsyncClient]:
        """This event loop's publisher and subscriber (gRPC channels belong
        to the loop they were made in)."""
        loop = asyncio.get_running_loop()
        made = self._clients.get(loop)
        if made is not None:
            return made
        from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient

        if self.url.emulator:
            import grpc
            from google.pubsub_v1.services.publisher.transports.grpc_asyncio import (
                PublisherGrpcAsyncIOTransport,
            )
            from google.pubsub_v1.services.subscriber.transports.grpc_asyncio import (
                SubscriberGrpcAsyncIOTransport,
            )

            # Channels of our own: the library's emulator channel keeps gRPC's
            # 4 MB receive limit, which a Pull of large messages exceeds.
            options = [
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ]
            publisher = PublisherAsyncClient(
                transport=PublisherGrpcAsyncIOTransport(
                    channel=grpc.aio.insecure_channel(self.url.emulator, options=options)
                )
            )
            subscriber = SubscriberAsyncClient(
                transport=SubscriberGrpcAsyncIOTransport(
                    channel=grpc.aio.insecure_channel(self.url.emulator, options=options)
                )
            )
        else:
            from google.api_core.client_options import ClientOptions

            credentials = await self._default_credentials()
            client_options = ClientOptions(api_endpoint=self.url.endpoint or None)
            publisher = PublisherAsyncClient(credentials=credentials, client_options=client_options)
            subscriber = SubscriberAsyncClient(
                credentials=credentials, client_options=client_options
            )
        with self._lock:
            self._clients[loop] = (publisher, subscriber)
        return publisher, subscriber

    async def _default_credentials(self) -> Any:
        """Application Default Credentials, looked up once, off the loop (the
        lookup may read files or ask the metadata server)."""
        if self._credentials is None:
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError

            try:
                credentials, _ = await asyncio.to_thread(
                    google.auth.default, scopes=["https://www.googleapis.com/auth/pubsub"]
                )
            except DefaultCredentialsError as exc:
                raise BackendMisconfiguredError(
                    f"no Google Cloud credentials for {self.url.display}: {exc} (set "
                    "GOOGLE_APPLICATION_CREDENTIALS, run on Google Cloud with a service "
                    "account, or use the emulator: emulator=host:port or PUBSUB_EMULATOR_HOST)"
                ) from exc
            self._credentials = credentials
        return self._credentials

    def forget_clients(self) -> None:
        """In a forked child: the clients (their channels and loops) are the
        parent's; drop them unclosed, and make new ones on first use. That is
        not enough once the parent has used gRPC: the child's calls then
        hang or crash (see the package's docstring)."""
        self._clients = {}
        self._lock = threading.Lock()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for owner, (publisher, subscriber) in list(self._clients.items()):

            async def shut(
                publisher: PublisherAsyncClient = publisher,
                subscriber: SubscriberAsyncClient = subscriber,
            ) -> None:
                # The transports' close() carries no annotations.
                await publisher.transport.close()  # type: ignore[no-untyped-call]
                await subscriber.transport.close()  # type: ignore[no-untyped-call]

            if owner is loop:
                with contextlib.suppress(Exception):
                    await shut()
            elif not owner.is_closed():
                # A blocking twin's loop: close its channels there.
                future = asyncio.run_coroutine_threadsafe(shut(), owner)
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(future)
            with self._lock:
                self._clients.pop(owner, None)

    async def call(self, operation: str, target: str, call: Callable[[], Awaitable[T]]) -> T:
        """One Pub/Sub call, with Google's errors turned into conveyor's
        (NotFound is left as it is: callers name what is missing)."""
        try:
            return await call()
        except Exception as exc:
            raise errors.translate(self.url.display, operation, target, exc) from exc

    # ------------------------------------------------------------------ queues

    def _path(self, kind: str, name: str) -> str:
        return (
            name if name.startswith("projects/") else f"projects/{self.url.project}/{kind}/{name}"
        )

    def _short(self, topic_path: str) -> str:
        """A topic's id when it is in the URL's project, else its path."""
        prefix = f"projects/{self.url.project}/topics/"
        return topic_path.removeprefix(prefix)

    def _paths(self, name: str) -> tuple[str, str]:
        """(topic path, subscription path) of a queue's name (a topic id, or
        a topic's path in another project)."""
        if name.startswith("projects/"):
            project, _, topic = name.removeprefix("projects/").partition("/topics/")
            subscription = f"projects/{project}/subscriptions/{topic}-conveyor"
            return name, subscription
        return self._path("topics", name), self._path(
            "subscriptions", self.url.subscription_name(name)
        )

    async def queue_url(self, name: str) -> str:
        """The path of the subscription conveyor reads the topic `name`
        through; with create=true the topic and subscription (and, for a
        work queue, its dead-letter topic and that one's subscription) are
        made first when missing."""
        return (await self._queue(name)).subscription

    async def _queue(self, name: str) -> _Queue:
        found = self._queues.get(name)
        if found is not None:
            return found
        from google.api_core.exceptions import NotFound

        topic, subscription = self._paths(name)
        _, subscriber = await self.client()
        try:
            got = await self.call(
                "GetSubscription",
                subscription,
                lambda: subscriber.get_subscription(
                    subscription=subscription, retry=errors.retry(), timeout=CALL_TIMEOUT
                ),
            )
        except NotFound:
            if not self.url.create:
                raise self._missing(topic, subscription) from None
            got = await self._create(name, topic, subscription)
        if got.topic != topic:
            raise BackendMisconfiguredError(
                f"the Pub/Sub subscription {subscription} reads {got.topic}, not {topic}: "
                "give the queue's topic its own subscription (subscription=... in the URL)"
            )
        if self.url.ordered and self._work_queue(name) and not got.enable_message_ordering:
            raise BackendMisconfiguredError(
                f"the Pub/Sub subscription {subscription} was made without message ordering, "
                "which ordered=true needs and Pub/Sub cannot turn on later: make a new "
                "subscription with ordering on (subscription=... in the URL)"
            )
        policy = got.dead_letter_policy
        queue = _Queue(
            topic=topic,
            subscription=subscription,
            dead_letter=self._short(policy.dead_letter_topic) if policy.dead_letter_topic else None,
            ack_deadline=got.ack_deadline_seconds or 10,
        )
        self._queues[name] = queue
        return queue

    def _work_queue(self, name: str) -> str | None:
        """The conveyor queue the topic `name` serves; None for a dead-letter topic."""
        return None if name.startswith("projects/") else self.url.conveyor_queue(name)

    def _missing(self, topic: str, subscription: str) -> QueueMissingError:
        return QueueMissingError(
            f"the Pub/Sub topic {topic} or its subscription {subscription} does not exist "
            f"({self.url.display}): create them (with a dead-letter topic), or add create=true "
            "to the URL to have conveyor create them on first use"
        )

    def _gone(self, queue: _Queue) -> QueueMissingError:
        """After a NotFound: the queue went away since it was resolved, so
        it is looked up again next time."""
        for name, known in list(self._queues.items()):
            if known is queue:
                del self._queues[name]
        return self._missing(queue.topic, queue.subscription)

    async def _create(self, name: str, topic: str, subscription: str) -> types.Subscription:
        from google.api_core.exceptions import AlreadyExists
        from google.pubsub_v1 import types

        publisher, subscriber = await self.client()
        logger.info("creating Pub/Sub topic %s and subscription %s", topic, subscription)
        with contextlib.suppress(AlreadyExists):
            await self.call(
                "CreateTopic",
                topic,
                lambda: publisher.create_topic(
                    name=topic, retry=errors.retry(), timeout=CALL_TIMEOUT
                ),
            )
        request = types.Subscription(
            name=subscription,
            topic=topic,
            ack_deadline_seconds=CREATED_ACK_DEADLINE,
            message_retention_duration=timedelta(seconds=RETENTION_SECONDS),
            # Set without a ttl: the subscription never expires (unset, Pub/Sub
            # deletes one idle for 31 days, and a quiet queue would lose its jobs).
            expiration_policy=types.ExpirationPolicy(),
        )
        conveyor_queue = self._work_queue(name)
        if conveyor_queue is not None:  # a work queue, not a dead-letter topic
            dlq = self.url.dlq_name(conveyor_queue)
            # The dead-letter topic's subscription first: a message dead-lettered
            # to a topic nobody subscribes to is gone.
            await self._queue(dlq)
            request.dead_letter_policy = types.DeadLetterPolicy(
                dead_letter_topic=self._path("topics", dlq),
                max_delivery_attempts=self.url.max_deliveries,
            )
            request.enable_message_ordering = self.url.ordered
        try:
            return await self.call(
                "CreateSubscription",
                subscription,
                lambda: subscriber.create_subscription(
                    request=request, retry=errors.retry(), timeout=CALL_TIMEOUT
                ),
            )
        except AlreadyExists:  # made by another process meanwhile
            return await self.call(
                "GetSubscription",
                subscription,
                lambda: subscriber.get_subscription(
                    subscription=subscription, retry=errors.retry(), timeout=CALL_TIMEOUT
                ),
            )

    async def dead_letter_queue(self, name: str) -> str | None:
        """The topic of the subscription's dead-letter policy, if any: its id
        (a path when in another project), which this client's calls take."""
        return (await self._queue(name)).dead_letter

    async def counts(self, name: str) -> dict[str, int]:
        """Nothing: Pub/Sub's API cannot count a subscription's messages
        (Cloud Monitoring can, and the emulator has no monitoring)."""
        await self._queue(name)
        return {}

    # ------------------------------------------------------------------ messages

    async def send(self, name: str, messages: Sequence[Outgoing]) -> dict[str, str]:
        """Publish in requests of up to 1,000 messages and 10 MB, in
        parallel (in order when any message has an ordering key). Returns
        {entry_id: error} for what did not go out: nothing is dropped
        silently."""
        queue = await self._queue(name)
        publisher, _ = await self.client()
        batches, failures = wire.publish_batches(messages)
        ordered = any(m.group for m in messages)
        gate = asyncio.Semaphore(1 if ordered else PUBLISH_PARALLEL)
        stopped: list[str] = []  # ordered: why the batches after a failed one were not sent

        async def publish(chunk: list[Outgoing]) -> dict[str, str]:
            async with gate:
                if stopped:
                    return {m.entry_id: stopped[0] for m in chunk}
                try:
                    await self._publish(queue, publisher, [wire.encode(m) for m in chunk])
                except BackendMisconfiguredError:
                    raise
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    if ordered:
                        stopped.append(f"not sent after an earlier batch failed ({why})")
                    return {m.entry_id: why for m in chunk}
                return {}

        for result in await asyncio.gather(*(publish(b) for b in batches)):
            failures.update(result)
        return failures

    async def _publish(
        self,
        queue: _Queue,
        publisher: PublisherAsyncClient,
        batch: list[types.PubsubMessage],
    ) -> None:
        from google.api_core.exceptions import NotFound

        try:
            await self.call(
                "Publish",
                queue.topic,
                lambda: publisher.publish(
                    topic=queue.topic, messages=batch, retry=errors.retry(), timeout=CALL_TIMEOUT
                ),
            )
        except NotFound:
            raise self._gone(queue) from None

    async def receive(self, name: str, limit: int, wait: int, visibility: int) -> list[Received]:
        """Up to `limit` messages (1,000 at most), waiting up to `wait`
        seconds for the first; each hidden for `visibility` seconds (0..600)."""
        queue = await self._queue(name)
        _, subscriber = await self.client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0, wait)
        ask = max(1, min(PULL_MAX, limit))
        while True:
            started = loop.time()
            pulled = await self._pull(name, queue, subscriber, ask, deadline - started)
            ready = await self._hold_back_early(queue, subscriber, pulled)
            if ready:
                return await self._hide(name, queue, subscriber, ready, visibility)
            now = loop.time()
            if now >= deadline:
                return []
            if now - started < PULL_PAUSE:  # came back at once: pause, never spin
                await asyncio.sleep(min(PULL_PAUSE, deadline - now))

    async def _pull(
        self,
        name: str,
        queue: _Queue,
        subscriber: SubscriberAsyncClient,
        limit: int,
        wait: float,
    ) -> list[types.ReceivedMessage]:
        from google.api_core.exceptions import DeadlineExceeded, NotFound

        subscription = queue.subscription

        def pull() -> Awaitable[types.PullResponse]:
            # Pull waits for a message up to its gRPC deadline. No
            # return_immediately, even for no wait: Google deprecates it (it
            # slows delivery down), so "no wait" is a short deadline.
            return subscriber.pull(
                subscription=subscription,
                max_messages=limit,
                retry=None,
                timeout=max(wait, SHORT_PULL),
            )

        try:
            reply = await self.call("Pull", subscription, pull)
        except NotFound:
            raise self._gone(queue) from None
        except BackendUnavailableError as exc:
            if isinstance(exc.__cause__, DeadlineExceeded):
                return []  # the wait ran out with nothing to deliver
            raise
        return list(reply.received_messages)

    async def _hold_back_early(
        self,
        queue: _Queue,
        subscriber: SubscriberAsyncClient,
        pulled: list[types.ReceivedMessage],
    ) -> list[types.ReceivedMessage]:
        """The messages that are due; those whose `not_before` has not come
        are hidden for the time left (up to 600 s; each is a delivery attempt)."""
        now = time.time()
        ready, early = [], defaultdict(list)
        for received in pulled:
            due = wire.not_before(received.message)
            if due > now:
                early[max(1, wire.clamp_deadline(due - now))].append(received.ack_id)
            else:
                ready.append(received)
        for seconds, ack_ids in early.items():
            await self._ack_calls(queue, subscriber, ack_ids, seconds)
        return ready

    async def _hide(
        self,
        name: str,
        queue: _Queue,
        subscriber: SubscriberAsyncClient,
        ready: list[types.ReceivedMessage],
        visibility: int,
    ) -> list[Received]:
        seconds = wire.clamp_deadline(visibility)
        if seconds != queue.ack_deadline:
            # A pulled message has the subscription's deadline: set the one
            # asked for. Should this fail, the error goes up and the messages
            # come back when the subscription's deadline ends.
            await self._ack_calls(queue, subscriber, [r.ack_id for r in ready], seconds)
        return [
            Received(
                queue=name,
                body=r.message.data.decode(errors="replace"),
                receipt=r.ack_id,
                receives=r.delivery_attempt or 1,
                message_id=r.message.message_id,
            )
            for r in ready
        ]

    async def change_visibility(self, name: str, changes: Sequence[tuple[str, int]]) -> list[bool]:
        """Set each (ack id, seconds), seconds clamped to 0..600; True where
        Pub/Sub accepted it."""
        queue = await self._queue(name)
        _, subscriber = await self.client()
        by_seconds: dict[int, list[int]] = defaultdict(list)
        for index, (_, seconds) in enumerate(changes):
            by_seconds[wire.clamp_deadline(seconds)].append(index)
        results = [False] * len(changes)

        async def one(seconds: int, indexes: list[int]) -> None:
            done = await self._ack_calls(
                queue, subscriber, [changes[i][0] for i in indexes], seconds
            )
            for index, ok in zip(indexes, done, strict=True):
                results[index] = ok

        await asyncio.gather(*(one(s, i) for s, i in by_seconds.items()))
        return results

    async def delete(self, name: str, receipts: Sequence[str]) -> list[bool]:
        """Acknowledge messages by ack id; True where Pub/Sub accepted it."""
        queue = await self._queue(name)
        _, subscriber = await self.client()
        return await self._ack_calls(queue, subscriber, list(receipts), None)

    async def _ack_calls(
        self,
        queue: _Queue,
        subscriber: SubscriberAsyncClient,
        ack_ids: list[str],
        seconds: int | None,
    ) -> list[bool]:
        """Acknowledge (seconds None) or ModifyAckDeadline, in batches in
        parallel; a batch refused as a whole is tried id by id."""
        from google.api_core.exceptions import InvalidArgument, NotFound

        subscription = queue.subscription

        async def send(ids: list[str]) -> None:
            if seconds is None:
                await self.call(
                    "Acknowledge",
                    subscription,
                    lambda: subscriber.acknowledge(
                        subscription=subscription,
                        ack_ids=ids,
                        retry=errors.retry(),
                        timeout=CALL_TIMEOUT,
                    ),
                )
            else:
                await self.call(
                    "ModifyAckDeadline",
                    subscription,
                    lambda: subscriber.modify_ack_deadline(
                        subscription=subscription,
                        ack_ids=ids,
                        ack_deadline_seconds=seconds,
                        retry=errors.retry(),
                        timeout=CALL_TIMEOUT,
                    ),
                )

        async def batch(ids: list[str]) -> list[bool]:
            try:
                await send(ids)
                return [True] * len(ids)
            except InvalidArgument:  # an ack id Pub/Sub does not know
                if len(ids) == 1:
                    return [False]
            except NotFound:
                raise self._gone(queue) from None
            return [ok for one in ids for ok in await batch([one])]

        results: list[bool] = []
        for done in await asyncio.gather(*(batch(c) for c in wire.ack_batches(ack_ids))):
            results += done
        return results
