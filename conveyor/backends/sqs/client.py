"""SQS calls on aiobotocore: one client per event loop, queue URLs looked up
(or created) once, batches of ten sent in parallel, and botocore's errors
turned into conveyor's.

Nothing here knows about jobs: callers hand in message bodies and receipt
handles. Every batch call reports per entry, so a partial failure is never
mistaken for success.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from conveyor.backends.broker.types import Outgoing, QueueMissingError, Received
from conveyor.backends.sqs.url import SQSURL
from conveyor.job import BackendMisconfiguredError, BackendUnavailableError

logger = logging.getLogger("conveyor.sqs")

BATCH: Final = 10  # SQS's most entries per batch call and messages per receive
# What SQS takes as a deduplication id: 1 to 128 letters, digits, punctuation.
_DEDUP_ID: Final = re.compile(r"""[A-Za-z0-9!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}""")
# SQS's most bytes in one batch call, all its messages together (the classic
# limit; queues allowing 1 MiB messages allow this too).
BATCH_BYTES: Final = 262_144
MAX_VISIBILITY: Final = 43_200  # 12 hours
MAX_DELAY: Final = 900  # 15 minutes
SEND_PARALLEL: Final = 16  # SendMessageBatch calls in flight for one enqueue
# Errors worth a second try: throttling and SQS's own hiccups.
_TRANSIENT: Final = frozenset(
    {"ThrottlingException", "RequestThrottled", "ServiceUnavailable", "InternalError"}
)
_MISSING: Final = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
T = TypeVar("T")

__all__ = ["MAX_DELAY", "MAX_VISIBILITY", "Outgoing", "QueueMissingError", "Received", "SQSClient"]


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class SQSClient:
    def __init__(self, url: SQSURL) -> None:
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, Any]] = {}
        self._queue_urls: dict[str, str] = {}
        self._dlqs: dict[str, str | None] = {}  # queue name -> its DLQ's name
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ clients

    async def client(self) -> Any:
        loop = asyncio.get_running_loop()
        made = self._clients.get(loop)
        if made is not None:
            return made[1]
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        session = get_session()
        if self.url.profile:
            session.set_config_variable("profile", self.url.profile)
        config = AioConfig(
            connect_timeout=5,
            # A long poll holds the request open for up to `wait` seconds.
            read_timeout=self.url.wait + 15,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=64,
        )
        context = session.create_client(
            "sqs",
            region_name=self.url.region,
            endpoint_url=self.url.endpoint_url,
            config=config,
        )
        client = await context.__aenter__()
        self._clients[loop] = (context, client)
        return client

    def forget_clients(self) -> None:
        """In a forked child: the clients (and their sockets and loops) are
        the parent's; drop them unclosed, and make new ones on first use."""
        self._clients = {}
        self._lock = threading.Lock()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for owner, (context, _) in list(self._clients.items()):
            if owner is loop:
                with contextlib.suppress(Exception):
                    await context.__aexit__(None, None, None)
                del self._clients[owner]
            elif owner.is_closed():
                del self._clients[owner]
            else:
                # A blocking twin's loop: close its client there.
                future = asyncio.run_coroutine_threadsafe(
                    context.__aexit__(None, None, None), owner
                )
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(future)
                del self._clients[owner]

    async def call(self, operation: str, **params: Any) -> Any:
        """One SQS call, with botocore's errors turned into conveyor's."""
        client = await self.client()
        try:
            return await getattr(client, operation)(**params)
        except Exception as exc:
            raise self._translate(operation, exc) from exc

    def _translate(self, operation: str, exc: Exception) -> Exception:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
        )

        where = self.url.endpoint_url or f"region {self.url.region}"
        if isinstance(exc, NoCredentialsError | NoRegionError):
            return BackendMisconfiguredError(
                f"SQS {operation} at {where}: {exc} (credentials come from the usual AWS "
                "chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, or a role)"
            )
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code in _MISSING:
                return exc  # type: ignore[no-any-return]  # callers resolving queues name it
            if code in ("AccessDenied", "AccessDeniedException", "InvalidClientTokenId"):
                return BackendMisconfiguredError(f"SQS {operation} at {where} refused: {exc}")
            if code in _TRANSIENT:
                return BackendUnavailableError(f"SQS {operation} at {where}: {exc}")
            return exc  # type: ignore[no-any-return]
        if isinstance(exc, EndpointConnectionError | OSError | asyncio.TimeoutError):
            return BackendUnavailableError(f"SQS at {where} unreachable ({operation}): {exc}")
        name = type(exc).__name__
        if "Timeout" in name or "Connection" in name:
            return BackendUnavailableError(f"SQS at {where} unreachable ({operation}): {exc}")
        return exc

    # ------------------------------------------------------------------ queues

    async def queue_url(self, name: str, *, dlq_of: str | None = None) -> str:
        """The queue's URL, created first when the URL says create=true."""
        found = self._queue_urls.get(name)
        if found is not None:
            return found
        if name == self.url.queue and self.url.queue_url is not None:
            self._queue_urls[name] = self.url.queue_url
            return self.url.queue_url
        try:
            reply = await self.call("get_queue_url", QueueName=name)
            url = str(reply["QueueUrl"])
        except Exception as exc:
            if _code(exc) not in _MISSING:
                raise
            if not self.url.create:
                raise QueueMissingError(
                    f"the SQS queue {name!r} does not exist at "
                    f"{self.url.endpoint_url or 'region ' + str(self.url.region)}: create it "
                    "(with a dead-letter queue), or add create=true to the URL to have "
                    "conveyor create it on first use"
                ) from None
            url = await self._create(name)
        self._queue_urls[name] = url
        return url

    async def _create(self, name: str) -> str:
        fifo = name.endswith(".fifo")
        attributes: dict[str, str] = {"ReceiveMessageWaitTimeSeconds": str(self.url.wait)}
        if fifo:
            attributes["FifoQueue"] = "true"
        conveyor_queue = self._conveyor_queue(name)
        if conveyor_queue is not None:  # a work queue, not a dead-letter queue
            dlq_name = self.url.dlq_name(conveyor_queue)
            dlq_url = await self.queue_url(dlq_name, dlq_of=name)
            reply = await self.call(
                "get_queue_attributes", QueueUrl=dlq_url, AttributeNames=["QueueArn"]
            )
            arn = reply["Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(self.url.max_receives)}
            )
            # Messages wait at most the longest SQS allows: 14 days.
            attributes["MessageRetentionPeriod"] = "1209600"
        else:
            attributes["MessageRetentionPeriod"] = "1209600"
        logger.info("creating SQS queue %s", name)
        reply = await self.call("create_queue", QueueName=name, Attributes=attributes)
        return str(reply["QueueUrl"])

    def _conveyor_queue(self, name: str) -> str | None:
        """The conveyor queue an SQS queue serves (None: a dead-letter queue)."""
        if name == self.url.queue:
            return "default"
        base, fifo = self.url.queue.removesuffix(".fifo"), self.url.fifo
        stem = name.removesuffix(".fifo") if fifo else name
        if self.url.dlq and name == self.url.dlq:
            return None
        if stem.endswith("-dlq"):
            return None
        if stem.startswith(base + "-"):
            return stem[len(base) + 1 :]
        return None

    async def dead_letter_queue(self, name: str) -> str | None:
        """The name of the queue's dead-letter queue (its redrive policy), if any."""
        if name in self._dlqs:
            return self._dlqs[name]
        reply = await self.call(
            "get_queue_attributes",
            QueueUrl=await self.queue_url(name),
            AttributeNames=["RedrivePolicy"],
        )
        policy = reply.get("Attributes", {}).get("RedrivePolicy")
        dlq = None
        if policy:
            arn = str(json.loads(policy).get("deadLetterTargetArn", ""))
            dlq = arn.rsplit(":", 1)[-1] or None
        self._dlqs[name] = dlq
        return dlq

    async def counts(self, name: str) -> dict[str, int]:
        """The queue's approximate message counts (SQS's own attributes)."""
        reply = await self.call(
            "get_queue_attributes",
            QueueUrl=await self.queue_url(name),
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
        attributes = reply.get("Attributes", {})
        return {
            key: int(attributes.get(key, 0))
            for key in (
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            )
        }

    # ------------------------------------------------------------------ messages

    async def send(self, name: str, messages: Sequence[Outgoing]) -> dict[str, str]:
        """Send in batches of ten, in parallel; entries SQS failed for a
        reason of its own are sent again (twice). Returns {entry_id: error}
        for what still did not go out: nothing is dropped silently."""
        queue_url = await self.queue_url(name)
        chunks = batches(messages)
        # In parallel, but not a thousand requests at once for 10,000 jobs;
        # a FIFO queue's batches one after the other, or they would land out
        # of order.
        gate = asyncio.Semaphore(1 if name.endswith(".fifo") else SEND_PARALLEL)

        async def send(chunk: Sequence[Outgoing]) -> dict[str, str]:
            async with gate:
                return await self._send_chunk(queue_url, chunk)

        failures: dict[str, str] = {}
        results = await asyncio.gather(*(send(c) for c in chunks), return_exceptions=True)
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                # This call's messages only: the other batches went out.
                failures.update({m.entry_id: f"{type(result).__name__}: {result}" for m in chunk})
            else:
                failures.update(result)
        return failures

    async def _send_chunk(self, queue_url: str, chunk: Sequence[Outgoing]) -> dict[str, str]:
        entries = []
        for message in chunk:
            entry: dict[str, Any] = {"Id": message.entry_id, "MessageBody": message.body}
            if message.delay:
                entry["DelaySeconds"] = message.delay
            if message.group is not None:
                entry["MessageGroupId"] = message.group
            if message.dedup is not None:
                entry["MessageDeduplicationId"] = deduplication_id(message.dedup)
            entries.append(entry)
        failed = await self._batch("send_message_batch", queue_url, entries)
        return {entry_id: _reason(f) for entry_id, f in failed.items()}

    async def _batch(
        self, operation: str, queue_url: str, entries: list[dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """One batch call; the entries that failed, by id. An entry SQS failed
        on its side (not the sender's fault) is tried again, twice; a
        sender's fault (a bad entry, a receipt no longer valid) fails the
        same way again, so it is answered at once."""
        failed: dict[str, dict[str, Any]] = {}
        pending = entries
        for attempt in range(3):
            if attempt:
                await asyncio.sleep(0.05 * 2**attempt)
            reply = await self.call(operation, QueueUrl=queue_url, Entries=pending)
            again: set[str] = set()
            for failure in reply.get("Failed", []):
                failed[failure["Id"]] = failure
                if not failure.get("SenderFault", True):
                    again.add(failure["Id"])
            for done in reply.get("Successful", []):
                failed.pop(done["Id"], None)
            pending = [e for e in pending if e["Id"] in again]
            if not pending:
                break
        return failed

    async def receive(self, name: str, limit: int, wait: int, visibility: int) -> list[Received]:
        reply = await self.call(
            "receive_message",
            QueueUrl=await self.queue_url(name),
            MaxNumberOfMessages=max(1, min(BATCH, limit)),
            WaitTimeSeconds=wait,
            VisibilityTimeout=visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            Received(
                queue=name,
                body=m["Body"],
                receipt=m["ReceiptHandle"],
                receives=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                message_id=m["MessageId"],
            )
            for m in reply.get("Messages", [])
        ]

    async def change_visibility(self, name: str, changes: Sequence[tuple[str, int]]) -> list[bool]:
        """Set each (receipt, seconds); True where SQS accepted it."""
        queue_url = await self.queue_url(name)

        async def chunk(items: Sequence[tuple[str, int]], base: int) -> dict[int, bool]:
            entries = [
                {"Id": str(base + i), "ReceiptHandle": r, "VisibilityTimeout": s}
                for i, (r, s) in enumerate(items)
            ]
            return await self._by_receipt("change_message_visibility_batch", queue_url, entries)

        return await _batched(changes, chunk)

    async def delete(self, name: str, receipts: Sequence[str]) -> list[bool]:
        """Delete messages by receipt handle; True where SQS accepted it."""
        queue_url = await self.queue_url(name)

        async def chunk(items: Sequence[str], base: int) -> dict[int, bool]:
            entries = [{"Id": str(base + i), "ReceiptHandle": r} for i, r in enumerate(items)]
            return await self._by_receipt("delete_message_batch", queue_url, entries)

        return await _batched(receipts, chunk)

    async def _by_receipt(
        self, operation: str, queue_url: str, entries: list[dict[str, Any]]
    ) -> dict[int, bool]:
        """One batch call on received messages: True where SQS did it, False
        where it refused the entry itself (a receipt no longer valid: the
        message went to another receive). An entry SQS failed on its side
        (not the sender's fault) is tried again; if it still fails, the call
        raises, so the caller tries the whole again rather than take a
        message it could not delete for one received elsewhere (its job
        would run again)."""
        failed = await self._batch(operation, queue_url, entries)
        theirs = [f for f in failed.values() if not f.get("SenderFault", True)]
        if theirs:
            reasons = "; ".join(sorted({_reason(f) for f in theirs}))
            raise BackendUnavailableError(
                f"SQS {operation}: {len(theirs)} message(s) failed on SQS's side ({reasons})"
            )
        return {int(e["Id"]): e["Id"] not in failed for e in entries}


async def _batched(
    items: Sequence[T], call: Callable[[Sequence[T], int], Awaitable[dict[int, bool]]]
) -> list[bool]:
    if not items:
        return []
    results: dict[int, bool] = {}
    chunks = [(items[i : i + BATCH], i) for i in range(0, len(items), BATCH)]
    for done in await asyncio.gather(*(call(c, base) for c, base in chunks)):
        results.update(done)
    return [results.get(i, False) for i in range(len(items))]


def batches(messages: Sequence[Outgoing]) -> list[list[Outgoing]]:
    """`messages` in order, in batch calls SQS takes: at most BATCH
    messages and BATCH_BYTES of bodies each (a message as big as one may
    be goes alone)."""
    out: list[list[Outgoing]] = []
    size = 0
    for message in messages:
        body = len(message.body.encode())
        if not out or len(out[-1]) == BATCH or size + body > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(message)
        size += body
    return out


def deduplication_id(text: str) -> str:
    """`text` (a job's key or id) as SQS takes a deduplication id: as it is
    where it is one, else a digest of it (the same text, the same id), so
    that a long key, or one with spaces or accents, dedups all the same."""
    if _DEDUP_ID.fullmatch(text):
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _reason(failure: dict[str, Any]) -> str:
    """A batch entry's failure as SQS said it."""
    return f"{failure.get('Code')}: {failure.get('Message', '')}"
