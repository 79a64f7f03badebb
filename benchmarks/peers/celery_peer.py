"""Celery with the Redis broker, or (SQS suite) kombu's SQS transport; no
result backend: the task result is ignored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, group  # type: ignore[import-untyped]

from peers import probe
from peers.base import Peer, dist_version
from peers.stores import sqs_options


def noop(t: float) -> None:
    probe.hit(t)


class CeleryPeer(Peer):
    name = "celery"
    settings = (
        "`celery worker --pool=threads --concurrency=10 --without-mingle --without-gossip "
        "--without-heartbeat` in one process (the threads pool: the default prefork pool "
        "would be 10 child processes); prefetch multiplier 4 (default), no result backend"
    )
    batch_call = (
        "`group(noop.s(...) for ...).apply_async()` (publishes one message per task over "
        "one producer; Celery has no pipelined batch publish, and `chunks` changes the unit "
        "of work so it is not used)"
    )

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.app = Celery("bench", broker=self.broker(url))
        self.app.conf.update(
            broker_connection_retry_on_startup=True,
            task_ignore_result=True,
            worker_hijack_root_logger=False,
            broker_transport_options=self.transport_options(url),
        )
        self.task: Any = self.app.task(name="bench.noop", ignore_result=True)(noop)

    @classmethod
    def for_url(cls, url: str) -> type[Peer]:
        return CelerySQSPeer if urlsplit(url).scheme == "sqs" else cls

    def broker(self, url: str) -> str:
        return url

    def transport_options(self, url: str) -> dict[str, Any]:
        return {}

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {
            "celery": dist_version("celery"),
            "kombu": dist_version("kombu"),
            "redis-py": dist_version("redis"),
        }

    async def close(self) -> None:
        self.app.close()

    async def enqueue_one(self, t: float) -> None:
        self.task.delay(t)

    async def enqueue_batch(self, ts: list[float]) -> None:
        group(self.task.s(t) for t in ts).apply_async()

    def run_worker(self, started: Callable[[], None]) -> None:
        started()
        self.app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={self.concurrency}",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "--loglevel=WARNING",
            ]
        )


class CelerySQSPeer(CeleryPeer):
    """The SQS suite's Celery: the suite hands every peer conveyor's URL form,
    `sqs://<queue>?region=..&endpoint_url=http://host:port`; kombu takes the
    endpoint as the broker URL's host (`sqs://host:port`, plain HTTP with
    `is_secure=False`) and the region as a transport option. Credentials come
    from the environment (boto3's usual chain)."""

    settings = (
        "`celery worker --pool=threads --concurrency=10 --without-mingle --without-gossip "
        "--without-heartbeat` in one process; kombu's SQS transport with its defaults "
        "(long polls of wait_time_seconds=10, polling_interval=1 s, visibility_timeout=1800 s; "
        "receives through pycurl in the worker's event loop), prefetch multiplier 4 "
        "(default), no result backend"
    )
    batch_call = (
        "`group(noop.s(...) for ...).apply_async()` (one SendMessage per task: kombu's SQS "
        "transport has no SendMessageBatch)"
    )
    notes = "Queue `celery`, created by kombu on first use (no dead-letter queue)."

    @classmethod
    def missing(cls, url: str) -> str | None:
        try:
            import kombu.transport.SQS  # type: ignore[import-untyped]  # noqa: F401 - needs boto3
            import pycurl  # type: ignore[import-untyped]  # noqa: F401 - the worker's receives
        except ImportError as exc:
            return f"n/a (not installed: {exc.name or exc}; pip install 'celery[sqs]')"
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {
            "celery": dist_version("celery"),
            "kombu": dist_version("kombu"),
            "boto3": dist_version("boto3"),
            "pycurl": dist_version("pycurl"),
        }

    def broker(self, url: str) -> str:
        endpoint = urlsplit(sqs_options(url)["endpoint_url"])
        return f"sqs://{endpoint.netloc}"

    def transport_options(self, url: str) -> dict[str, Any]:
        options = sqs_options(url)
        secure = urlsplit(options["endpoint_url"]).scheme == "https"
        return {"region": options["region"], "is_secure": secure}


PEER = CeleryPeer
