"""The JSON cache on every backend: get/set/delete, time to live, bad values,
and `wrap` (compute once, single flight, errors, sync compute functions)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import Conveyor, InvalidOptionError, InvalidPayloadError

from .conftest import Peer, needs

# Also with the cache on a backend of their own (tests/conftest.py SPLIT_SERVICES).
pytestmark = [needs("cache"), pytest.mark.split_services]

MISSING = object()


class Counted:
    """A compute function (async or sync) that counts its calls."""

    def __init__(self, value: Any, delay: float = 0.0, error: Exception | None = None) -> None:
        self.value = value
        self.delay = delay
        self.error = error
        self.calls = 0

    async def compute(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value

    def compute_sync(self) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.value


VALUES = [
    {"a": 1, "nested": {"list": [1, 2.5, "x", None, True]}},
    [1, "two", {"three": 3}],
    42,
    -3.25,
    "text with ünïcode ✓",
    "",
    True,
    False,
    0,
    [],
    {},
]


@pytest.mark.parametrize("value", VALUES, ids=[f"v{n}" for n in range(len(VALUES))])
async def test_set_then_get_returns_the_json_value(app: Conveyor, value: Any) -> None:
    await app.cache.set("k", value)
    got = await app.cache.get("k")
    assert got == value
    assert type(got) is type(value)


async def test_get_of_a_missing_key_gives_the_default(app: Conveyor) -> None:
    assert await app.cache.get("missing") is None
    assert await app.cache.get("missing", default=MISSING) is MISSING
    assert await app.cache.get("missing", 7) == 7


async def test_a_stored_none_is_not_missing(app: Conveyor) -> None:
    await app.cache.set("k", None)
    assert await app.cache.get("k", default=MISSING) is None


async def test_tuples_come_back_as_lists_and_models_as_dicts(app: Conveyor) -> None:
    class Point(BaseModel):
        x: int
        y: int

    await app.cache.set("t", (1, 2))
    assert await app.cache.get("t") == [1, 2]
    await app.cache.set("m", Point(x=1, y=2))
    assert await app.cache.get("m") == {"x": 1, "y": 2}


async def test_set_overwrites(app: Conveyor) -> None:
    await app.cache.set("k", {"v": 1})
    await app.cache.set("k", [2])
    assert await app.cache.get("k") == [2]


async def test_keys_are_independent_and_may_hold_any_text(app: Conveyor) -> None:
    keys = ["user:42", "user:42:profile", "with space", "ünï", "{braces}", "*", "a/b"]
    for n, key in enumerate(keys):
        await app.cache.set(key, n)
    assert [await app.cache.get(key) for key in keys] == list(range(len(keys)))


async def test_delete(app: Conveyor) -> None:
    await app.cache.set("k", 1)
    await app.cache.set("other", 2)
    assert await app.cache.delete("k") is True
    assert await app.cache.get("k", MISSING) is MISSING
    assert await app.cache.delete("k") is False
    assert await app.cache.delete("never-set") is False
    assert await app.cache.get("other") == 2


async def test_values_expire_after_their_ttl(app: Conveyor) -> None:
    await app.cache.set("short", {"v": 1}, ttl=0.2)
    await app.cache.set("long", {"v": 2}, ttl=30)
    await app.cache.set("forever", {"v": 3})
    assert await app.cache.get("short") == {"v": 1}
    await asyncio.sleep(0.3)
    assert await app.cache.get("short", MISSING) is MISSING
    assert await app.cache.get("long") == {"v": 2}
    assert await app.cache.get("forever") == {"v": 3}


async def test_deleting_an_expired_value_deletes_nothing(app: Conveyor) -> None:
    """An expired value reads as missing: deleting it says nothing was there,
    on every store, whether or not it cleared the entry away yet."""
    await app.cache.set("short", 1, ttl=0.1)
    await asyncio.sleep(0.25)
    assert await app.cache.delete("short") is False
    assert await app.cache.get("short", MISSING) is MISSING


async def test_setting_again_without_ttl_keeps_the_value(app: Conveyor) -> None:
    await app.cache.set("k", 1, ttl=0.2)
    await app.cache.set("k", 2)
    await asyncio.sleep(0.3)
    assert await app.cache.get("k") == 2


async def test_setting_again_with_a_new_ttl_replaces_the_old(app: Conveyor) -> None:
    await app.cache.set("k", 1, ttl=30)
    await app.cache.set("k", 2, ttl=0.2)
    await asyncio.sleep(0.3)
    assert await app.cache.get("k", MISSING) is MISSING


async def test_the_cache_is_shared_through_the_store(app: Conveyor, peer: Peer) -> None:
    other = await peer()
    await app.cache.set("shared", {"from": "app"})
    assert await other.cache.get("shared") == {"from": "app"}
    assert await other.cache.delete("shared") is True
    assert await app.cache.get("shared", MISSING) is MISSING


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, {"x": object()}, b"bytes", float("nan"), float("inf"), [float("-inf")]],
    ids=["object", "set", "nested-object", "bytes", "nan", "inf", "nested-inf"],
)
async def test_a_non_json_value_is_refused_and_nothing_stored(app: Conveyor, value: Any) -> None:
    await app.cache.set("k", "before")
    with pytest.raises(InvalidPayloadError, match="JSON"):
        await app.cache.set("k", value)
    with pytest.raises(InvalidPayloadError, match="JSON"):
        await app.cache.set("new", value)
    assert await app.cache.get("k") == "before"
    assert await app.cache.get("new", MISSING) is MISSING


@pytest.mark.parametrize(
    "ttl",
    [
        0,
        -1,
        True,
        "5",
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(1e16, id="beyond-every-store"),  # Redis refused it with its own error
    ],
)
async def test_bad_ttl_is_refused(app: Conveyor, ttl: Any) -> None:
    with pytest.raises(InvalidOptionError, match="ttl"):
        await app.cache.set("k", 1, ttl=ttl)
    counted = Counted(1)
    with pytest.raises(InvalidOptionError, match="ttl"):
        await app.cache.wrap("k", ttl, counted.compute)
    assert counted.calls == 0
    assert await app.cache.get("k", MISSING) is MISSING


@pytest.mark.parametrize("key", ["", None, 5])
async def test_bad_key_is_refused(app: Conveyor, key: Any) -> None:
    for call in (
        lambda: app.cache.get(key),
        lambda: app.cache.set(key, 1),
        lambda: app.cache.delete(key),
        lambda: app.cache.wrap(key, 10, lambda: 1),
    ):
        with pytest.raises(InvalidOptionError, match="key"):
            await call()


# --------------------------------------------------------------------------- wrap


async def test_wrap_computes_once_and_stores(app: Conveyor) -> None:
    counted = Counted({"answer": 42})
    assert await app.cache.wrap("k", 30, counted.compute) == {"answer": 42}
    assert await app.cache.get("k") == {"answer": 42}
    assert await app.cache.wrap("k", 30, counted.compute) == {"answer": 42}
    assert counted.calls == 1


async def test_wrap_returns_the_stored_value_without_computing(app: Conveyor) -> None:
    await app.cache.set("k", "stored")
    counted = Counted("computed")
    assert await app.cache.wrap("k", 30, counted.compute) == "stored"
    assert counted.calls == 0


async def test_wrap_computes_again_after_the_ttl(app: Conveyor) -> None:
    counted = Counted(1)
    assert await app.cache.wrap("k", 0.2, counted.compute) == 1
    await asyncio.sleep(0.3)
    counted.value = 2
    assert await app.cache.wrap("k", 0.2, counted.compute) == 2
    assert counted.calls == 2


async def test_wrap_without_ttl_keeps_the_value(app: Conveyor) -> None:
    counted = Counted([1, 2])
    assert await app.cache.wrap("k", None, counted.compute) == [1, 2]
    assert await app.cache.wrap("k", None, counted.compute) == [1, 2]
    assert counted.calls == 1


async def test_wrap_returns_what_later_readers_get(app: Conveyor) -> None:
    counted = Counted((1, "two"))  # a tuple is stored as a JSON list
    first = await app.cache.wrap("k", 30, counted.compute)
    assert first == [1, "two"]
    assert await app.cache.wrap("k", 30, counted.compute) == first


async def test_wrap_with_a_sync_compute_function(app: Conveyor) -> None:
    counted = Counted({"sync": True})
    assert await app.cache.wrap("k", 30, counted.compute_sync) == {"sync": True}
    assert await app.cache.wrap("k", 30, counted.compute_sync) == {"sync": True}
    assert await app.cache.wrap("k2", 30, lambda: 5) == 5
    assert counted.calls == 1
    assert await app.cache.get("k2") == 5


async def test_wrap_single_flight(app: Conveyor) -> None:
    counted = Counted({"expensive": True}, delay=0.2)
    results = await asyncio.gather(*(app.cache.wrap("k", 30, counted.compute) for _ in range(20)))
    assert counted.calls == 1
    assert results == [{"expensive": True}] * 20
    assert await app.cache.get("k") == {"expensive": True}


async def test_wrap_single_flight_is_per_key(app: Conveyor) -> None:
    a, b = Counted("a", delay=0.1), Counted("b", delay=0.1)
    results = await asyncio.gather(
        *(app.cache.wrap("a", 30, a.compute) for _ in range(5)),
        *(app.cache.wrap("b", 30, b.compute) for _ in range(5)),
    )
    assert results == ["a"] * 5 + ["b"] * 5
    assert (a.calls, b.calls) == (1, 1)


async def test_a_failing_compute_reaches_every_waiter_and_stores_nothing(
    app: Conveyor,
) -> None:
    failing = Counted(None, delay=0.2, error=ValueError("upstream down"))
    results = await asyncio.gather(
        *(app.cache.wrap("k", 30, failing.compute) for _ in range(20)),
        return_exceptions=True,
    )
    assert failing.calls == 1
    assert len(results) == 20
    assert all(isinstance(r, ValueError) and str(r) == "upstream down" for r in results)
    assert await app.cache.get("k", MISSING) is MISSING
    # The failure is not cached: the next call computes again.
    working = Counted("recovered")
    assert await app.cache.wrap("k", 30, working.compute) == "recovered"
    assert working.calls == 1


async def test_a_failing_sync_compute_propagates(app: Conveyor) -> None:
    failing = Counted(None, error=KeyError("nope"))
    with pytest.raises(KeyError):
        await app.cache.wrap("k", 30, failing.compute_sync)
    assert await app.cache.get("k", MISSING) is MISSING


async def test_a_non_json_computed_value_is_refused_and_nothing_stored(
    app: Conveyor,
) -> None:
    counted = Counted({"x": object()}, delay=0.1)
    results = await asyncio.gather(
        *(app.cache.wrap("k", 30, counted.compute) for _ in range(5)),
        return_exceptions=True,
    )
    assert counted.calls == 1
    assert all(isinstance(r, InvalidPayloadError) for r in results), results
    assert await app.cache.get("k", MISSING) is MISSING


async def test_cancelling_the_computing_caller_does_not_cancel_the_waiters(
    app: Conveyor,
) -> None:
    started = asyncio.Event()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(0.2)
        return "value"

    leader = asyncio.create_task(app.cache.wrap("k", 30, compute))
    await asyncio.wait_for(started.wait(), 5)
    waiters = [asyncio.create_task(app.cache.wrap("k", 30, compute)) for _ in range(5)]
    await asyncio.sleep(0.05)  # the waiters now wait on the leader's computation
    leader.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert results == ["value"] * 5
    assert await app.cache.get("k") == "value"


async def test_blocking_twins_from_a_thread(app: Conveyor) -> None:
    counted = Counted({"n": 1})

    def sync_code() -> tuple[Any, Any, Any, bool, Any]:
        app.cache.set_sync("k", {"v": 1}, ttl=30)
        got = app.cache.get_sync("k")
        wrapped = app.cache.wrap_sync("w", 30, counted.compute_sync)
        again = app.cache.wrap_sync("w", 30, counted.compute_sync)
        deleted = app.cache.delete_sync("k")
        return got, wrapped, again, deleted, app.cache.get_sync("k", MISSING)

    got, wrapped, again, deleted, after = await asyncio.to_thread(sync_code)
    assert got == {"v": 1}
    assert wrapped == again == {"n": 1}
    assert counted.calls == 1
    assert deleted is True
    assert after is MISSING
    assert await app.cache.get("w") == {"n": 1}


async def test_a_wrap_whose_read_is_overtaken_does_not_compute_again(app: Conveyor) -> None:
    """Two callers miss; the first computes and stores before the second's
    read (on another pooled connection, say) comes back empty. The second
    must find the value, not compute it once more."""
    store: Any = await app.cache._store()
    real_get = store.cache_get
    first_done = asyncio.Event()
    slowed: set[asyncio.Task[Any]] = set()

    async def overtaken(key: str) -> Any:
        answer = await real_get(key)
        task = asyncio.current_task()
        if task is second and task not in slowed:  # answered before the store
            slowed.add(task)
            await first_done.wait()
        return answer

    store.cache_get = overtaken
    computed = 0

    async def compute() -> int:
        nonlocal computed
        computed += 1
        await asyncio.sleep(0.01)
        return 42

    try:
        first = asyncio.create_task(app.cache.wrap("k", 30, compute))
        second = asyncio.create_task(app.cache.wrap("k", 30, compute))
        assert await first == 42
        assert slowed  # the second caller's read was held back
        first_done.set()
        assert await second == 42
    finally:
        del store.cache_get
    assert computed == 1
