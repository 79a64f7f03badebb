"""Fixtures of the conformance suite: every test here runs on every backend.

`backend_url` (one fresh URL of the backend under test, parametrized over the
backends with their marks, resolved lazily) comes from tests/conftest.py, so
the property tests share the same matrix. This file builds on it:

* `app`: a `Conveyor(backend_url, **service_urls)` (with the locks' and
  cache's own backend under a split configuration, see tests/conftest.py),
  opened, closed after the test. Job types are registered per test, on this
  fresh app.
* `make_app(**options)`: the same with options (`keep_completed=5`, ...).
* `worker(app, **overrides)`: an in-process worker with settings fast enough
  for tests (short heartbeat, recovery and poll intervals).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor import Conveyor, Worker
from conveyor.backends import from_url
from conveyor.backends.base import Capabilities

FAST_WORKER: dict[str, Any] = {
    "concurrency": 4,
    "lease": 2.0,
    "heartbeat_interval": 0.05,
    "recover_interval": 0.05,
    "poll_interval": 0.05,
    "shutdown_timeout": 5.0,
}


def fast_worker(app: Conveyor, **overrides: Any) -> Worker:
    """`app.worker(...)` with fast test settings; `overrides` win."""
    return app.worker(**{**FAST_WORKER, **overrides})


MakeApp = Callable[..., Awaitable[Conveyor]]


# What a `needs(...)` mark may name beyond the Capabilities flags themselves.
DERIVED: dict[str, tuple[Callable[[Capabilities], bool], str]] = {
    "long_delays": (lambda c: c.max_delay is None, "delays of any length"),
    "any_delays": (lambda c: c.max_delay is None or c.max_delay > 0, "delayed jobs"),
    "negative_priorities": (
        lambda c: c.priorities and (c.min_priority is None or c.min_priority < 0),
        "priorities below 0",
    ),
    "lasting_keys": (
        lambda c: c.keys and c.key_window is None,
        "idempotency keys kept while the job is (reported as duplicates)",
    ),
}


def needs(*capabilities: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as `pytestmark`) as needing what these
    capabilities declare: on a backend that declares it cannot, the test is
    skipped, saying which capability, so skips are counted and never silent.
    Names are `Capabilities` fields (lookup, cancel, priorities, ...) or the
    derived ones in DERIVED."""
    for name in capabilities:
        if name not in DERIVED and name not in Capabilities.__dataclass_fields__:
            raise ValueError(f"needs({name!r}): not a capability")
    return pytest.mark.needs(*capabilities)


@pytest.fixture(autouse=True)
def _skip_by_declared_capability(request: pytest.FixtureRequest) -> None:
    wanted = [name for mark in request.node.iter_markers("needs") for name in mark.args]
    if not wanted or "backend_url" not in request.fixturenames:
        return
    url = request.getfixturevalue("backend_url")
    jobs_caps = from_url(url).capabilities
    backend = request.getfixturevalue("backend_name")
    services: dict[str, str] = request.getfixturevalue("service_urls")
    for name in wanted:
        # Locks and the cache are on their own backend under a split configuration.
        own = services.get(f"{name}_url")
        caps = from_url(own).capabilities if own is not None else jobs_caps
        if name in DERIVED:
            check, what = DERIVED[name]
            if not check(caps):
                pytest.skip(f"capability: {backend} declares no {what} ({name})")
        elif not getattr(caps, name):
            pytest.skip(f"capability: {backend} declares {name}=False")


@pytest.fixture
async def make_app(backend_url: str, service_urls: dict[str, str]) -> AsyncIterator[MakeApp]:
    made: list[Conveyor] = []

    async def make(**options: Any) -> Conveyor:
        conveyor = Conveyor(backend_url, **{**service_urls, **options})
        made.append(conveyor)
        await conveyor.open()
        return conveyor

    yield make
    for conveyor in made:
        await conveyor.close()
        # The blocking twins start a helper loop thread: stop and close it so
        # no loop is left for the garbage collector to warn about.
        await asyncio.to_thread(conveyor.portal.stop)


@pytest.fixture
async def app(make_app: MakeApp) -> Conveyor:
    return await make_app()


@pytest.fixture
def worker() -> Callable[..., Worker]:
    return fast_worker


Peer = Callable[[], Awaitable[Conveyor]]


@pytest.fixture
async def peer(app: Conveyor, backend_name: str, make_app: Any) -> AsyncIterator[Peer]:
    """A second Conveyor on the same store as `app`, with no job types.

    memory:// gives every Conveyor its own store, so on memory the peer
    shares `app`'s backend object; elsewhere it opens the same URL anew."""
    shared: list[Conveyor] = []

    async def make() -> Conveyor:
        if backend_name != "memory":
            made: Conveyor = await make_app()
            return made
        other = Conveyor(app.url, backend=app.backend)
        await other.open()
        shared.append(other)
        return other

    yield make
    for other in shared:
        await asyncio.to_thread(other.portal.stop)
