"""Distributed locks on every backend: owner tokens, time to live, `wait=`,
the `app.lock()` context manager, bad options and the blocking twins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor import Conveyor, InvalidOptionError

from .conftest import Peer, needs

# Also with the locks on a backend of their own (tests/conftest.py SPLIT_SERVICES).
pytestmark = [needs("locks"), pytest.mark.split_services]


async def test_acquire_returns_a_token_and_a_second_acquire_gets_none(app: Conveyor) -> None:
    token = await app.locks.acquire("k", ttl=5)
    assert isinstance(token, str) and token
    assert await app.locks.acquire("k", ttl=5) is None
    # Other keys are independent.
    other = await app.locks.acquire("k2", ttl=5)
    assert other is not None and other != token
    assert await app.locks.release("k", token) is True
    again = await app.locks.acquire("k", ttl=5)
    assert again is not None and again != token


async def test_a_lock_held_through_one_app_is_held_for_another(app: Conveyor, peer: Peer) -> None:
    other = await peer()
    token = await app.locks.acquire("shared", ttl=5)
    assert token is not None
    assert await other.locks.acquire("shared", ttl=5) is None
    assert await other.locks.release("shared", "not-the-token") is False
    assert await other.locks.release("shared", token) is True  # the token is the owner
    assert await other.locks.acquire("shared", ttl=5) is not None


async def test_only_the_owner_releases(app: Conveyor) -> None:
    token = await app.locks.acquire("k", ttl=5)
    assert token is not None
    assert await app.locks.release("k", "someone-else") is False
    assert await app.locks.acquire("k", ttl=5) is None  # still held
    assert await app.locks.release("k", token) is True
    assert await app.locks.release("k", token) is False  # already released
    assert await app.locks.release("never-held", token) is False


async def test_only_the_owner_extends(app: Conveyor) -> None:
    token = await app.locks.acquire("k", ttl=0.5)
    assert token is not None
    assert await app.locks.extend("k", "someone-else", ttl=5) is False
    assert await app.locks.extend("k", token, ttl=5) is True
    await asyncio.sleep(0.7)  # past the first ttl: the extension keeps it held
    assert await app.locks.acquire("k", ttl=5) is None
    assert await app.locks.release("k", token) is True
    assert await app.locks.extend("k", token, ttl=5) is False  # no longer held
    assert await app.locks.extend("never-held", token, ttl=5) is False


async def test_an_expired_lock_can_be_taken_and_the_old_owner_loses_it(
    app: Conveyor,
) -> None:
    old = await app.locks.acquire("k", ttl=0.2)
    assert old is not None
    await asyncio.sleep(0.3)
    new = await app.locks.acquire("k", ttl=5)
    assert new is not None and new != old
    assert await app.locks.release("k", old) is False
    assert await app.locks.extend("k", old, ttl=5) is False
    assert await app.locks.acquire("k", ttl=5) is None  # the new owner still holds it
    assert await app.locks.release("k", new) is True


async def test_an_expired_lock_is_not_released_or_extended_by_its_old_owner(
    app: Conveyor,
) -> None:
    token = await app.locks.acquire("k", ttl=0.2)
    assert token is not None
    await asyncio.sleep(0.3)
    assert await app.locks.extend("k", token, ttl=5) is False
    assert await app.locks.release("k", token) is False
    assert await app.locks.acquire("k", ttl=5) is not None


async def test_lock_context_manager(app: Conveyor) -> None:
    async with app.lock("job:sync", ttl=5) as held:
        assert held is True
        async with app.lock("job:sync", ttl=5) as nested:
            assert nested is False
        # The nested block did not hold it, so it released nothing.
        assert await app.locks.acquire("job:sync", ttl=5) is None
        async with app.lock("job:other", ttl=5) as other:
            assert other is True
    # Released on exit.
    token = await app.locks.acquire("job:sync", ttl=5)
    assert token is not None
    await app.locks.release("job:sync", token)


async def test_lock_context_manager_releases_when_the_body_raises(app: Conveyor) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with app.lock("k", ttl=5) as held:
            assert held
            raise RuntimeError("boom")
    assert await app.locks.acquire("k", ttl=5) is not None


async def test_lock_context_manager_waits(app: Conveyor) -> None:
    token = await app.locks.acquire("k", ttl=5)
    assert token is not None

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        await app.locks.release("k", token)

    releaser = asyncio.create_task(release_later())
    async with app.lock("k", ttl=5, wait=5) as held:
        assert held is True
    await releaser


async def test_acquire_with_wait_retries_until_the_holder_releases(app: Conveyor) -> None:
    holder = await app.locks.acquire("k", ttl=10)
    assert holder is not None

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        assert await app.locks.release("k", holder) is True

    started = time.monotonic()
    releaser = asyncio.create_task(release_later())
    token = await app.locks.acquire("k", ttl=5, wait=5)
    waited = time.monotonic() - started
    await releaser
    assert token is not None and token != holder
    assert 0.25 <= waited < 5
    assert await app.locks.acquire("k", ttl=5) is None


async def test_acquire_with_wait_gives_up_after_wait(app: Conveyor) -> None:
    assert await app.locks.acquire("k", ttl=10) is not None
    started = time.monotonic()
    assert await app.locks.acquire("k", ttl=5, wait=0.3) is None
    assert 0.25 <= time.monotonic() - started < 5


async def test_acquire_with_wait_takes_a_lock_that_expires(app: Conveyor) -> None:
    assert await app.locks.acquire("k", ttl=0.3) is not None  # never released
    assert await app.locks.acquire("k", ttl=5, wait=5) is not None


async def test_only_one_of_many_concurrent_acquirers_wins(app: Conveyor, peer: Peer) -> None:
    other = await peer()
    tokens = await asyncio.gather(*(a.locks.acquire("contended", ttl=5) for a in [app, other] * 10))
    assert sum(token is not None for token in tokens) == 1


async def test_waiters_take_turns(app: Conveyor) -> None:
    inside: list[int] = []
    order: list[str] = []

    async def critical(n: int) -> None:
        async with app.lock("turns", ttl=5, wait=10) as held:
            assert held
            inside.append(n)
            assert len(inside) == 1, inside
            order.append(f"enter {n}")
            await asyncio.sleep(0.02)
            order.append(f"exit {n}")
            inside.remove(n)

    await asyncio.gather(*(critical(n) for n in range(5)))
    assert len(order) == 10
    for enter, leave in zip(order[::2], order[1::2], strict=True):
        assert enter.split()[0] == "enter" and leave == enter.replace("enter", "exit")


@pytest.mark.parametrize(
    "ttl",
    [
        0,
        -1,
        True,
        "5",
        None,
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
    ],
)
async def test_bad_ttl_is_refused(app: Conveyor, ttl: Any) -> None:
    with pytest.raises(InvalidOptionError, match="ttl"):
        await app.locks.acquire("k", ttl=ttl)
    token = await app.locks.acquire("k", ttl=5)
    assert token is not None  # nothing was taken by the bad call
    with pytest.raises(InvalidOptionError, match="ttl"):
        await app.locks.extend("k", token, ttl=ttl)
    with pytest.raises(InvalidOptionError, match="ttl"):
        async with app.lock("k2", ttl=ttl):
            pass


@pytest.mark.parametrize("key", ["", None, 5])
async def test_bad_key_is_refused(app: Conveyor, key: Any) -> None:
    with pytest.raises(InvalidOptionError, match="key"):
        await app.locks.acquire(key, ttl=5)
    with pytest.raises(InvalidOptionError, match="key"):
        async with app.lock(key, ttl=5):
            pass


async def test_blocking_twins_from_a_thread(app: Conveyor) -> None:
    def sync_code() -> tuple[str | None, str | None, bool, bool, bool]:
        token = app.locks.acquire_sync("k", ttl=5)
        second = app.locks.acquire_sync("k", ttl=5)
        extended = app.locks.extend_sync("k", token, ttl=5) if token else False
        foreign = app.locks.release_sync("k", "someone-else")
        released = app.locks.release_sync("k", token) if token else False
        return token, second, extended, foreign, released

    token, second, extended, foreign, released = await asyncio.to_thread(sync_code)
    assert token is not None
    assert second is None
    assert (extended, foreign, released) == (True, False, True)
    # The async API sees the same store.
    assert await app.locks.acquire("k", ttl=5) is not None


async def test_a_blocking_holder_excludes_async_callers(app: Conveyor) -> None:
    token = await asyncio.to_thread(app.locks.acquire_sync, "k", 5)
    assert token is not None
    assert await app.locks.acquire("k", ttl=5) is None
    waiter = asyncio.create_task(app.locks.acquire("k", ttl=5, wait=5))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    assert await asyncio.to_thread(app.locks.release_sync, "k", token) is True
    assert await asyncio.wait_for(waiter, 5) is not None


@pytest.mark.parametrize("wait", [float("nan"), float("inf"), -1.0, "5"])
async def test_a_wait_that_is_not_seconds_is_refused(app: Conveyor, wait: Any) -> None:
    held = await app.locks.acquire("k", 30)
    assert held is not None
    with pytest.raises(InvalidOptionError, match="lock wait"):  # NaN spun for ever
        await asyncio.wait_for(app.locks.acquire("k", 30, wait=wait), 5)


async def test_an_acquire_whose_reply_was_lost_leaves_the_lock_free(app: Conveyor) -> None:
    """The store took the lock but its answer never came (the connection
    cut): the caller gets an error and no token, so no one could release
    the lock; it is given back at once, not held by nobody for its ttl."""
    from conveyor import BackendUnavailableError

    store: Any = await app.locks._store()
    acquire = store.lock_acquire

    async def taken_then_lost(*args: Any, **kwargs: Any) -> bool:
        await acquire(*args, **kwargs)
        raise BackendUnavailableError("the reply was lost (injected)")

    store.lock_acquire = taken_then_lost
    try:
        with pytest.raises(BackendUnavailableError):
            await app.locks.acquire("cut", ttl=60)
    finally:
        del store.lock_acquire
    assert await app.locks.acquire("cut", ttl=60) is not None
