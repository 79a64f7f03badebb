"""Per-service backends (issue 14, point 1): the locks and the cache of an app
on backends of their own, `Conveyor(url, locks_url=..., cache_url=...)` or
`$CONVEYOR_LOCKS_URL` / `$CONVEYOR_CACHE_URL`.

The locks and cache conformance suites run on split configurations too
(tests/conftest.py SPLIT_SERVICES); these tests cover what they do not:
where a URL comes from, which URLs are refused, sharing, the lifecycle, a
fork, and jobs on SQS with locks and the cache on Redis.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import BackendUnavailableError, Conveyor, NotSupportedError, UnsupportedURLError
from conveyor.settings import CONVEYOR_CACHE_URL, CONVEYOR_LOCKS_URL

WAIT = 20.0


def sqlite(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}.db"


async def test_unset_services_use_the_jobs_backend(tmp_path: Path) -> None:
    async with Conveyor(sqlite(tmp_path, "jobs")) as app:
        assert app.services.own() == []
        token = await app.locks.acquire("k", ttl=5)
        await app.cache.set("c", 1)
    # Stored in the jobs database: another app on it alone sees both.
    async with Conveyor(sqlite(tmp_path, "jobs")) as other:
        assert token is not None and await other.locks.acquire("k", ttl=5) is None
        assert await other.cache.get("c") == 1


async def test_locks_and_cache_on_backends_of_their_own(tmp_path: Path) -> None:
    locks, cache = sqlite(tmp_path, "locks"), sqlite(tmp_path, "cache")
    async with Conveyor(sqlite(tmp_path, "a"), locks_url=locks, cache_url=cache) as app:
        assert await app.locks.acquire("k", ttl=5) is not None
        await app.cache.set("c", "from a")
        assert await app.cache.get("c") == "from a"
    # Another app with other jobs but the same services shares them ...
    async with Conveyor(sqlite(tmp_path, "b"), locks_url=locks, cache_url=cache) as other:
        assert await other.locks.acquire("k", ttl=5) is None
        assert await other.cache.get("c") == "from a"
    # ... and the jobs database of the first holds neither.
    async with Conveyor(sqlite(tmp_path, "a")) as jobs_only:
        assert await jobs_only.locks.acquire("k", ttl=5) is not None
        assert await jobs_only.cache.get("c") is None
    # Locks and cache are apart from each other too.
    async with Conveyor(sqlite(tmp_path, "a"), cache_url=locks) as crossed:
        assert await crossed.cache.get("c") is None


async def test_the_environment_names_the_services_and_arguments_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONVEYOR_LOCKS_URL, sqlite(tmp_path, "locks"))
    monkeypatch.setenv(CONVEYOR_CACHE_URL, sqlite(tmp_path, "cache"))
    async with Conveyor(sqlite(tmp_path, "jobs")) as app:
        assert [b.url for b in (app.services.locks, app.services.cache) if b] == [
            sqlite(tmp_path, "locks"),
            sqlite(tmp_path, "cache"),
        ]
        assert await app.locks.acquire("k", ttl=5) is not None
    async with Conveyor(sqlite(tmp_path, "jobs"), locks_url=sqlite(tmp_path, "other")) as app:
        assert app.services.locks is not None
        assert app.services.locks.url == sqlite(tmp_path, "other")
        assert await app.locks.acquire("k", ttl=5) is not None  # not the env's locks


def test_one_url_is_one_backend_and_the_jobs_url_is_the_jobs_backend(tmp_path: Path) -> None:
    shared = sqlite(tmp_path, "services")
    app = Conveyor(sqlite(tmp_path, "jobs"), locks_url=shared, cache_url=shared)
    assert app.services.locks is app.services.cache is not None
    assert len(app.services.own()) == 1
    same = Conveyor(sqlite(tmp_path, "jobs"), locks_url=sqlite(tmp_path, "jobs"))
    assert same.services.own() == []


@pytest.mark.parametrize(
    ("option", "url", "named"),
    [
        ("locks_url", "sqs://jobs?region=us-east-1", "locks_url="),
        ("cache_url", "sqs://jobs.fifo?region=us-east-1", "cache_url="),
    ],
)
def test_a_backend_that_cannot_hold_the_service_is_refused_at_construction(
    option: str, url: str, named: str
) -> None:
    pytest.importorskip("aiobotocore")
    with pytest.raises(UnsupportedURLError) as caught:
        Conveyor("memory://", **{option: url})
    message = str(caught.value)
    assert named in message and "sqs://" in message and "store=" in message, message


def test_the_refusal_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("aiobotocore")
    monkeypatch.setenv(CONVEYOR_CACHE_URL, "sqs://jobs?region=us-east-1")
    with pytest.raises(UnsupportedURLError, match=r"\$CONVEYOR_CACHE_URL .*cannot hold a cache"):
        Conveyor("memory://")


def test_the_jobs_url_itself_is_refused_when_its_backend_cannot_hold_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Naming the jobs URL for a service is not leaving it unset: on a broker
    without a store (e.g. a deployment template that sets
    CONVEYOR_LOCKS_URL=$CONVEYOR_URL) it is refused at construction too, not
    at the first lock."""
    pytest.importorskip("aiobotocore")
    jobs = "sqs://jobs?region=us-east-1"
    with pytest.raises(UnsupportedURLError, match=r"locks_url= names .*cannot hold locks"):
        Conveyor(jobs, locks_url=jobs)
    monkeypatch.setenv(CONVEYOR_CACHE_URL, jobs)
    with pytest.raises(UnsupportedURLError) as caught:
        Conveyor(jobs)
    message = str(caught.value)
    assert "$CONVEYOR_CACHE_URL" in message and "cannot hold a cache" in message, message
    assert "leave" not in message, message  # leaving it unset would not help either


@pytest.mark.parametrize("url", ["nope://x", "not a url"])
def test_an_unknown_service_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(UnsupportedURLError):
        Conveyor("memory://", locks_url=url)


async def test_an_unreachable_service_fails_the_open_and_leaves_nothing_open(
    tmp_path: Path,
) -> None:
    pytest.importorskip("redis")
    app = Conveyor(sqlite(tmp_path, "jobs"), cache_url="redis://127.0.0.1:1/0")
    with pytest.raises(BackendUnavailableError, match="Redis"):
        await app.open()
    with pytest.raises(BackendUnavailableError):
        await app.cache.get("k")  # still not open: each use tries again
    await app.close()
    await asyncio.to_thread(app.portal.stop)


# --------------------------------------------------------------------------- real servers


@pytest.mark.sqs
@pytest.mark.redis
async def test_jobs_on_sqs_with_locks_and_cache_on_redis(
    sqs_bare_urls: Callable[[], str], redis_urls: Callable[[], str]
) -> None:
    """The issue's example: a broker without a store has no locks or cache,
    so they live on Redis; the handlers use both while SQS carries the jobs."""
    jobs, services = sqs_bare_urls(), redis_urls()
    bare = Conveyor(jobs)
    with pytest.raises(NotSupportedError, match=r"no locks; .*locks_url=.*\$CONVEYOR_LOCKS_URL"):
        await bare.locks.acquire("k", ttl=5)  # without locks_url: refused at use, as before
    with pytest.raises(NotSupportedError, match=r"no cache; .*cache_url=.*\$CONVEYOR_CACHE_URL"):
        await bare.cache.get("k")
    await bare.close()

    app = Conveyor(jobs, locks_url=services, cache_url=services)
    seen: list[bool] = []
    completed = asyncio.Event()
    app.on("job.completed", lambda event: completed.set())

    @app.job("report")
    async def report(payload: dict[str, int], ctx: object) -> int:
        async with app.lock("report", ttl=10) as held:
            seen.append(held)
            return await app.cache.wrap("total", None, lambda: payload["n"] * 2)

    async with app:
        job = await report.enqueue({"n": 21})
        async with app.worker(concurrency=1, poll_interval=0.2):
            await asyncio.wait_for(completed.wait(), WAIT)
    assert job.id and seen == [True]
    async with Conveyor("memory://", cache_url=services, locks_url=services) as other:
        assert await other.cache.get("total") == 42
        assert await other.locks.acquire("report", ttl=5) is not None  # released after the job


def _child_uses_the_services(app: Conveyor, report: object) -> None:
    from multiprocessing.connection import Connection

    assert isinstance(report, Connection)
    try:
        token = app.locks.acquire_sync("child", 30)
        app.cache.set_sync("from", os.getpid())
        held_by_parent = app.locks.acquire_sync("parent", 5) is None
        app.close_sync()
        report.send(json.dumps({"token": token, "held_by_parent": held_by_parent}))
    except BaseException as exc:
        report.send(json.dumps({"error": repr(exc)}))
    finally:
        report.close()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_uses_the_services_and_the_parent_goes_on(tmp_path: Path) -> None:
    """The services' own backends are readied for a fork like the jobs
    backend: the SQLite backend's thread exists in the parent only."""
    services = sqlite(tmp_path, "services")
    app = Conveyor(sqlite(tmp_path, "jobs"), locks_url=services, cache_url=services)
    try:
        assert app.locks.acquire_sync("parent", 30) is not None  # connections now exist
        receive, send = multiprocessing.Pipe(duplex=False)
        pid = os.fork()
        if pid == 0:
            try:
                _child_uses_the_services(app, send)
            finally:
                os._exit(0)
        send.close()
        deadline = time.monotonic() + WAIT
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung")
            time.sleep(0.02)
        outcome = json.loads(receive.recv()) if receive.poll(WAIT) else {}
        receive.close()
        assert "error" not in outcome and outcome.get("token"), outcome
        assert outcome["held_by_parent"] is True
        # The parent sees what the child did, on its own connections.
        assert app.cache.get_sync("from") == pid
        assert app.locks.acquire_sync("child", 5) is None
    finally:
        app.close_sync()
